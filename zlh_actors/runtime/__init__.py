"""The actor runtime: per-server actors, their supervision, and ownership of servers across replicas."""
