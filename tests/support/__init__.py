"""Shared test support: fakes, the session harness, wire checks, browser helpers."""
