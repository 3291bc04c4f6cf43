"""The server actor: message -> chart event -> fenced write -> side effect."""
