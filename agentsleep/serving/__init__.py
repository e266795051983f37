"""Serving: answer with the current version and hot-swap to a new one without downtime."""
