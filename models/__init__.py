"""Streaming speech models (see README.md for the protocol every model follows)."""
