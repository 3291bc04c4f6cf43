"""Integration tests of the reference agent: real agent and game processes, sockets on loopback."""
