"""runnerd: a self-hosted automation and monitoring daemon (Mechanic's model, on SQLite or PostgreSQL)."""

from __future__ import annotations

__version__ = "0.1.0"
