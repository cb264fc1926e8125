"""The learning-rate schedule the training commands share: a linear warm-up, then a half
cosine down to a floor."""
from __future__ import annotations

import math


def warmup_cosine(step: int, total_steps: int, warmup: int, floor: float) -> float:
    """Multiplier of the peak learning rate at `step`: (step + 1) / warmup during the warm-up,
    then a half cosine that reaches `floor` (min lr / peak lr) at `total_steps`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
