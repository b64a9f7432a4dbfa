"""Voxwire clients. They speak the Realtime protocol and never import the server."""
