"""Unit tests of the agent protocol, its pure modules and the lab stand-ins (no sockets)."""
