"""How many examples a property test runs: its usual count times TESSERA_TEST_EXAMPLES_SCALE.

A refactor of the processor is checked with the invariants run harder than usual
(`TESSERA_TEST_EXAMPLES_SCALE=5 .venv/bin/pytest tests/identity/test_rebuild.py ...`);
CI runs the usual counts.
"""

from __future__ import annotations

import os


def examples(usual: int) -> int:
    """`usual` scaled by TESSERA_TEST_EXAMPLES_SCALE (a positive number; default 1)."""
    raw = os.environ.get("TESSERA_TEST_EXAMPLES_SCALE", "1")
    try:
        scale = float(raw)
    except ValueError:
        raise ValueError(f"TESSERA_TEST_EXAMPLES_SCALE must be a number, not {raw!r}") from None
    if scale <= 0:
        raise ValueError(f"TESSERA_TEST_EXAMPLES_SCALE must be positive, not {raw!r}")
    return max(1, round(usual * scale))
