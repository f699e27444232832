"""How many Hypothesis examples a test that sets its own count runs under the current profile."""

from __future__ import annotations

import os


def examples(ci: int) -> int:
    """``ci`` under the "ci" profile (scripts/test.sh, so CI); a fifth of it, at least 5, under "dev" (local runs)."""
    return ci if os.environ.get("HYPOTHESIS_PROFILE", "dev") == "ci" else max(5, ci // 5)
