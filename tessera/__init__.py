"""Tessera: an open-source customer data platform with a built-in CRM."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
