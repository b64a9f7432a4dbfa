"""The session core: coordination, audio intake, partials, speculation, items, requests."""
