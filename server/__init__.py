"""Voxwire: a real-time voice assistant server speaking the OpenAI Realtime protocol."""

__version__ = "0.1.0"
