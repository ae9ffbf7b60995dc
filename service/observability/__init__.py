"""Metrics (one definition module), structured logs, and model quality (live accuracy and
input drift)."""
