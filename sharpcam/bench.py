"""``sharpcam bench``: frames per second on this machine, per resolution and method.

Measures the file-mode pipeline as sharpcam runs it, one thread reading and sharpening
while another sends (no camera; frames as fast as it goes, or with ``--fps`` at a
camera's rate, where the CPU use is what that rate costs): ``off``
is the full pipeline path with the model bypassed, ``unsharp`` the classical
baseline, and the model both tiled (unless it reads the whole frame) and whole-frame.
Where sharpcam would choose between engines at start (``--threads auto``: one thread or
the default count; ``--precision auto`` with an INT8 sibling) each candidate gets a
whole-frame column. For each, frames per second and the process's CPU use (cores kept busy).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Optional

import numpy as np

from .controls import ControlState, Controls
from .engine import ModelError
from .lifetime import Lifetime
from .options import (UsageError, add_model_options, bounded_float, engine_threads, frames_in_flight_for,
                      open_engine_from, positive_int)
from .pipeline import Pipeline
from .engine_choice import EngineChoice
from .sharpen import Sharpener, unsharp_mask
from .sources import DemoSource
from .tiling import min_useful_tile, tile_problem

SIZES = ((640, 480), (1280, 720), (1920, 1080))


class _RepeatSource(Lifetime):
    """Hands out a few frames in turn, so only the pipeline's own work is timed.  The
    sharpener skips the model for a frame identical to the one before, and with frames in
    flight a lane's frames in a row can be any of them: so each frame handed out carries
    its number (modulo 256) in its first byte, and no two in a row are identical.  The
    pipeline is done with a frame, or has copied it, before it reads the next, so the
    buffers are reused.  With ``pace``
    (frames/s) frame k is handed out no sooner than k/pace seconds after the first, as from
    a camera; with ``seconds`` it ends after that long, once ``min_frames`` are out."""
    self_paced, finite, frame_count, fps = False, False, 0, 30.0

    def __init__(self, frames, *, pace: Optional[float] = None, seconds: Optional[float] = None,
                 min_frames: int = 0, clock=time.perf_counter):
        self.frames = frames
        self.height, self.width = frames[0].shape[:2]
        self.pace, self.seconds, self.min_frames, self._clock = pace, seconds, min_frames, clock
        self.index = 0
        self._start = None

    def read(self):
        now = self._clock()
        if self._start is None:
            self._start = now
        if self.seconds is not None and self.index >= self.min_frames and now - self._start >= self.seconds:
            return None
        if self.pace:
            time.sleep(max(0.0, self._start + self.index / self.pace - now))
        self.index += 1
        frame = self.frames[self.index % len(self.frames)]
        frame[0, 0, 0] = self.index & 0xFF
        return frame

    def reopen(self) -> bool:
        return True

    def describe(self) -> str:
        return f"{len(self.frames)} {self.width}x{self.height} frames in turn"


class _CopySink(Lifetime):
    """Costs what an in-memory virtual camera costs: one copy of the frame.  Notes when
    each frame arrived, on the wall clock and the process's CPU clock."""

    def __init__(self):
        self.buffer = None
        self.arrivals = []

    def send(self, frame):
        if self.buffer is None or self.buffer.shape != frame.shape:
            self.buffer = np.empty_like(frame)
        np.copyto(self.buffer, frame)
        self.arrivals.append((time.perf_counter(), time.process_time()))

    def describe(self) -> str:
        return "a frame buffer in memory"


class _UnsharpSharpener:
    model_ms = 0.0

    def process(self, frame, state):
        return unsharp_mask(frame)


def time_pipeline(frames, sharpener, seconds: float, min_frames: int = 3,
                  pace: Optional[float] = None, warm_up: int = 2, frames_in_flight: int = 1) -> tuple:
    """(frames per second, CPU use in cores) of the file-mode pipeline, as sharpcam runs
    it (``frames_in_flight`` at once), over ``frames`` in turn, from the arrival of frame
    ``warm_up`` at the sink to the last: allocation and first-run costs are not steady
    state. CPU use is the process's CPU seconds (every thread) per second over that
    window: 2.0 means two cores kept busy. With ``pace`` (frames/s) a frame never starts
    before its time, as from a camera: the CPU use is then what that frame rate costs."""
    source = _RepeatSource(frames, pace=pace, seconds=seconds, min_frames=min_frames + warm_up + 1)
    sink = _CopySink()
    Pipeline(source, sharpener, Controls(), [sink], frames_in_flight=frames_in_flight).run_file()
    (wall0, cpu0), (wall1, cpu1) = sink.arrivals[warm_up], sink.arrivals[-1]
    wall = wall1 - wall0
    frames_timed = len(sink.arrivals) - 1 - warm_up
    # Over a window of a few frames (--seconds 0), threads still finishing the previous
    # cell's work (OpenCV's pool waits busy a while) can add more CPU time than the window
    # has cores for; no process keeps more cores busy than the machine has.
    return frames_timed / wall, min((cpu1 - cpu0) / wall, float(os.cpu_count() or 1))


def bench(engine, *, sizes=SIZES, tile: int = 256, seconds: float = 2.0, out=None,
          pace: Optional[float] = None, frames_in_flight: int = 1) -> list:
    """Prints and returns the table; ``tile`` 0 leaves out the tiled column; ``pace``
    (frames/s) feeds frames no faster than a camera of that rate would; the model's
    columns sharpen ``frames_in_flight`` frames at once."""
    out = out or sys.stdout
    rows = []
    off_state = ControlState(mode="off")

    class _Off:
        model_ms = 0.0

        def __init__(self):
            self.inner = Sharpener(engine, tile=0)

        def process(self, frame, state):
            return self.inner.process(frame, off_state)

    methods = [("off", lambda: _Off()), ("unsharp", lambda: _UnsharpSharpener())]
    # A choice of engines (--threads auto, --precision auto with an INT8 sibling): each one
    # on the whole frame, so the table shows what each costs; the tiled column runs the first.
    candidates = engine.engines if isinstance(engine, EngineChoice) else {"": engine}
    first_name, first = next(iter(candidates.items()))
    if tile:
        methods.append((f"model tile {tile} {first_name}".rstrip(), lambda: Sharpener(first, tile=tile)))
    methods += [(f"model whole {name}".rstrip(), lambda e=e: Sharpener(e, tile=0))
                for name, e in candidates.items()]
    header = f"{'resolution':<11}" + "".join(f"{name:>30}" for name, _ in methods)
    print(header + "   (cpu: cores busy, CPU seconds per second)", file=out)
    for width, height in sizes:
        with DemoSource(width=width, height=height) as demo:
            frames = [demo.read(), demo.read()]
        cells = []
        for name, make in methods:
            in_flight = frames_in_flight if name.startswith("model") else 1
            cells.append(time_pipeline(frames, make(), seconds, pace=pace, frames_in_flight=in_flight))
        rows.append(((width, height), cells))
        print(f"{f'{width}x{height}':<11}" + "".join(
            f"{f'{fps:.1f} fps ({1000 / fps:.1f} ms) cpu {cpu:.1f}':>30}" for fps, cpu in cells),
            file=out, flush=True)
    return rows


def _sizes(value: str) -> tuple:
    sizes = []
    for item in value.split(","):
        parts = item.strip().lower().split("x")
        try:
            width, height = (int(v) for v in parts)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{item.strip()!r} is not WIDTHxHEIGHT; expected e.g. 640x480,1280x720") from None
        if width < 1 or height < 1:
            raise argparse.ArgumentTypeError(f"{item.strip()!r}: width and height must be positive")
        sizes.append((width, height))
    return tuple(sizes)


def bench_main(argv) -> int:
    """``sharpcam bench ARGS``; raises UsageError for a problem the user can fix."""
    p = argparse.ArgumentParser(prog="sharpcam bench",
                                description="Frames/s at 640x480, 1280x720 and 1920x1080 for off, "
                                            "unsharp mask and the model (tiled and whole-frame).")
    add_model_options(p)
    p.add_argument("--tile", type=positive_int, default=None,
                   help="tile size for the tiled column (default 256, or the model's smallest useful tile; "
                        "no tiled column for a model that reads the whole frame)")
    p.add_argument("--seconds", default=2.0, help="time per cell (default 2)",
                   type=bounded_float(0.0, 3600.0, "must be a number of seconds", "must be between 0 and 3600"))
    p.add_argument("--sizes", type=_sizes, default=SIZES, metavar="WxH,...",
                   help="resolutions to measure (default 640x480,1280x720,1920x1080)")
    p.add_argument("--fps", default=None, metavar="N",
                   type=bounded_float(0.1, 1000.0, "must be frames per second", "must be between 0.1 and 1000"),
                   help="feed frames at N per second, as a camera does, and report the CPU use at that "
                        "rate (default: as fast as the pipeline goes)")
    args = p.parse_args(argv)
    engine = open_engine_from(args, notify=print)
    if engine.reads_whole_frame and not args.tile:
        tile = 0  # such a model has no tiled column
    else:
        tile = args.tile or max(256, min_useful_tile(engine.receptive_radius, engine.size_multiple))
    problem = tile_problem(tile, engine.receptive_radius, engine.size_multiple, engine.reads_whole_frame)
    if problem:
        raise UsageError(problem)
    threads = (f" (--threads auto on {os.cpu_count()} cores: a column for each candidate)"
               if engine_threads(args) == "auto" else "")
    pacing = (f"frames fed at {args.fps:g} per second as from a camera" if args.fps
              else "without camera or pacing")
    in_flight = frames_in_flight_for(args)
    if in_flight > 1:
        pacing += f", the model on {in_flight} frames at once"
    print(f"sharpcam bench: {engine.describe()}{threads}; frames/s (ms per frame) and CPU use "
          f"of the pipeline {pacing}, one frame copy to the sink")
    try:
        bench(engine, sizes=args.sizes, tile=tile, seconds=args.seconds, pace=args.fps,
              frames_in_flight=in_flight)
    except ModelError as exc:
        raise UsageError(str(exc)) from None
    return 0
