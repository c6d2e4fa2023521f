"""`python -m tessera` runs the CLI."""

from __future__ import annotations

from tessera.cli import main

main()
