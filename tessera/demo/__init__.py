"""Seeded demo customer journeys of a fashion shop, their ground truth, and a loader."""

from __future__ import annotations

from tessera.demo.command import demo_summary
from tessera.demo.journeys import DEFAULT_START, generate
from tessera.demo.loader import LoadError, send
from tessera.demo.truth import Dataset, Person, message_identifiers, pairwise_precision_recall

__all__ = [
    "DEFAULT_START",
    "Dataset",
    "LoadError",
    "Person",
    "demo_summary",
    "generate",
    "message_identifiers",
    "pairwise_precision_recall",
    "send",
]
