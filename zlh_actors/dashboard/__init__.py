"""The dashboard: static files served at `/` (see docs/dashboard.md)."""
