"""Audiences: who belongs to a segment, defined in a JSON language and evaluated per person."""
