"""``sharpcam bench``: frames per second on this machine, per resolution and method.

Measures the per-frame work of the pipeline (no camera, no pacing): ``off``
is the full pipeline path with the model bypassed, ``unsharp`` the classical
baseline, and the model both tiled and whole-frame, at the thread count given;
with ``--precision auto`` and an INT8 sibling, whole-frame at fp32 and at INT8.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

SIZES = ((640, 480), (1280, 720), (1920, 1080))


class _RepeatSource:
    """Hands out the same frame forever, so only the pipeline's own work is timed."""
    self_paced, finite, live, fps = False, False, False, 30.0

    def __init__(self, frame):
        self.frame = frame
        self.height, self.width = frame.shape[:2]

    def read(self):
        return self.frame


class _CopySink:
    """Costs what an in-memory virtual camera costs: one copy of the frame."""

    def __init__(self):
        self.buffer = None

    def send(self, frame):
        if self.buffer is None or self.buffer.shape != frame.shape:
            self.buffer = np.empty_like(frame)
        np.copyto(self.buffer, frame)


class _UnsharpSharpener:
    model_ms = 0.0

    def process(self, frame, state):
        from .sharpen import unsharp_mask
        return unsharp_mask(frame)


def time_pipeline(frame, sharpener, seconds: float, min_frames: int = 3) -> float:
    """Frames per second of the file-mode pipeline over repeated copies of ``frame``."""
    from .controls import Controls
    from .pipeline import Pipeline
    source = _RepeatSource(frame)
    controls = Controls()
    # One untimed frame first: allocation and first-run costs are not steady state.
    sink = _CopySink()
    Pipeline(source, sharpener, controls, [sink], max_frames=1).run_file()
    frames, start = 0, time.perf_counter()
    while frames < min_frames or time.perf_counter() - start < seconds:
        Pipeline(source, sharpener, controls, [sink], max_frames=1).run_file()
        frames += 1
    return frames / (time.perf_counter() - start)


def bench(engine, *, sizes=SIZES, tile: int = 256, seconds: float = 2.0, out=None) -> list:
    from .controls import ControlState
    from .sharpen import Sharpener
    from .sources import DemoSource
    out = out or sys.stdout
    rows = []
    off_state = ControlState(mode="off")

    class _Off:
        model_ms = 0.0

        def __init__(self):
            self.inner = Sharpener(engine, tile=0)

        def process(self, frame, state):
            return self.inner.process(frame, off_state)

    methods = [("off", lambda: _Off()), ("unsharp", lambda: _UnsharpSharpener()),
               (f"model tile {tile}", lambda: Sharpener(engine, tile=tile))]
    # --precision auto with an INT8 sibling: the whole frame at each precision.
    precisions = getattr(engine, "engines", None) or {"": engine}
    methods += [(f"model whole {name}".rstrip(), lambda e=e: Sharpener(e, tile=0))
                for name, e in precisions.items()]
    header = f"{'resolution':<11}" + "".join(f"{name:>22}" for name, _ in methods)
    print(header, file=out)
    for width, height in sizes:
        with DemoSource(width=width, height=height) as demo:
            frame = demo.read()
        cells = []
        for name, make in methods:
            fps = time_pipeline(frame, make(), seconds)
            cells.append(fps)
        rows.append(((width, height), cells))
        print(f"{f'{width}x{height}':<11}" + "".join(
            f"{f'{fps:.1f} fps ({1000 / fps:.1f} ms)':>22}" for fps in cells), file=out, flush=True)
    return rows


def bench_main(argv) -> int:
    from .cli import add_model_options, error
    from .engine import ModelError
    from .precision import open_engine
    p = argparse.ArgumentParser(prog="sharpcam bench",
                                description="Frames/s at 640x480, 1280x720 and 1920x1080 for off, "
                                            "unsharp mask and the model (tiled and whole-frame).")
    add_model_options(p)
    p.add_argument("--tile", type=int, default=256, help="tile size for the tiled column (default 256)")
    p.add_argument("--seconds", type=float, default=2.0, help="time per cell (default 2)")
    p.add_argument("--sizes", default=None, metavar="WxH,...", help="resolutions to measure")
    args = p.parse_args(argv)
    sizes = SIZES
    if args.sizes:
        try:
            sizes = tuple(tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(","))
        except ValueError:
            return error(f"--sizes {args.sizes!r}: expected e.g. 640x480,1280x720")
    try:
        engine = open_engine(args.model, args.precision, notify=print, device=args.device,
                             threads=args.threads, receptive_radius=args.receptive_radius,
                             size_multiple=args.size_multiple)
    except ModelError as exc:
        return error(str(exc))
    threads = "" if args.threads else f", default threads ({os.cpu_count()} cores)"
    print(f"sharpcam bench: {engine.describe()}{threads}; frames/s (ms per frame) of the "
          "pipeline without camera or pacing, one frame copy to the sink")
    bench(engine, sizes=sizes, tile=args.tile, seconds=args.seconds)
    return 0
