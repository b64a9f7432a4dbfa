"""The doors: the WebSocket and HTTP edge, keys and tokens."""
