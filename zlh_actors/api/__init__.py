"""The HTTP API: REST, health, and (later) the WebSocket stream and admin views."""
