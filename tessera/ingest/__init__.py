"""Ingest: the Segment-compatible tracking API, sources and write keys, validation."""
