"""`python -m models`: parameters and compute of every student preset and the released
teacher, counted with torch.utils.flop_counter (1 multiply-add = 2 FLOP)."""

import torch
from torch.utils.flop_counter import FlopCounterMode

from models.restormer import RESTORMER_PRESETS, Restormer
from models.student import STUDENT_PRESETS, build_student
from sharpcam.tiling import round_up


def gflop(model, height, width) -> float:
    """Compute of one height×width frame as sharpcam runs it: padded at the bottom and
    right to the model's size multiple (720 rows are 736 for a multiple of 32)."""
    multiple = getattr(model, "size_multiple", 1)
    height, width = round_up(height, multiple), round_up(width, multiple)
    # On the meta device shapes propagate but nothing is computed: the released teacher
    # at 720p would otherwise take minutes.
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.to("meta")(torch.zeros(1, 3, height, width, device="meta"))
    return counter.get_total_flops() / 1e9


def main():
    with torch.device("meta"):  # shapes without initialising 26 M teacher weights
        rows = [(f"student {name}", build_student(name)) for name in STUDENT_PRESETS]
        rows.append(("teacher restormer (released)", Restormer(**RESTORMER_PRESETS["released"])))
    print(f"{'model':<30} {'params':>12} {'GFLOP/256² tile':>16} {'GFLOP/1280×720':>15}")
    for name, model in rows:
        params = sum(p.numel() for p in model.parameters())
        print(f"{name:<30} {params:>12,} {gflop(model, 256, 256):>16.2f} "
              f"{gflop(model, 720, 1280):>15.2f}")


if __name__ == "__main__":
    main()
