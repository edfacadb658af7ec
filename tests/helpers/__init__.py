"""Shared test helpers (import as ``helpers.<module>``; pytest puts ``tests/`` on the path)."""
