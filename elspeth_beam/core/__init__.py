"""Contracts shared by every layer: canonical hashing, ids, tokens, audit events."""
