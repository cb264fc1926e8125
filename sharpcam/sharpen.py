"""Sharpening one frame: mirror → tiles → engine → blend under the current controls.

Owns the per-frame arithmetic (output = input + s·(model − input), the
split view and its divider) and the classical unsharp mask used as the
baseline in ``sharpcam bench``.  Frames are BGR uint8 H×W×3 in and out; the
only float conversions are the one into the model batch and the one out.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Callable, Optional

import cv2
import numpy as np

from .controls import ControlState
from .engine import Engine
from .tiling import Tiler, tile_problem

DIVIDER_COLOR = (255, 255, 255)


def to_uint8_bgr(rgb_planar: np.ndarray, frame: np.ndarray, strength: float) -> np.ndarray:
    """Blend a 3×H×W RGB float model result with the BGR uint8 input frame."""
    # Per plane, addWeighted with an 8-bit dtype scales, rounds and saturates (clips) in one
    # pass; merging the small uint8 planes afterwards is ~2x cheaper than merging floats.
    if strength == 1.0:
        planes = [cv2.addWeighted(rgb_planar[c], 255.0, rgb_planar[c], 0.0, 0.0, dtype=cv2.CV_8U)
                  for c in (2, 1, 0)]
    else:
        originals = cv2.split(frame)
        planes = [cv2.addWeighted(rgb_planar[2 - b], 255.0 * strength,
                                  originals[b].astype(np.float32), 1.0 - strength, 0.0,
                                  dtype=cv2.CV_8U)
                  for b in range(3)]
    return cv2.merge(planes)


def output_is_finite(out: np.ndarray) -> bool:
    """Whether a model result holds no NaN or infinity, in one pass (~0.5 ms at 720p).

    The sum of squares is NaN or infinite if any element is; it also overflows for
    values beyond ~1e16, which no image model produces unless it is broken too.
    """
    flat = out.reshape(-1)
    return bool(np.isfinite(np.vdot(flat, flat)))


def _warn_on_stderr(message: str) -> None:
    print(f"sharpcam: warning: {message}", file=sys.stderr, flush=True)


def draw_split(original: np.ndarray, processed: np.ndarray) -> np.ndarray:
    """Left half original, right half processed, a 2-pixel divider between."""
    mid = original.shape[1] // 2
    processed[:, :mid] = original[:, :mid]
    processed[:, max(0, mid - 1):mid + 1] = DIVIDER_COLOR
    return processed


# The classical baseline every SharpCam number is compared against, in one place:
# image + amount · (image − G(σ) ∗ image). Amount 0.5 at σ 1 is a moderate setting of
# OBS's sharpen filter; the evaluation also tunes the amount per degradation.
UNSHARP_AMOUNT = 0.5
UNSHARP_SIGMA = 1.0


def unsharp_mask(image: np.ndarray, amount: float = UNSHARP_AMOUNT, sigma: float = UNSHARP_SIGMA) -> np.ndarray:
    """The unsharp mask of a uint8 frame (saturated) or a float image in [0, 1] (clipped)."""
    blurred = cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT_101)
    out = cv2.addWeighted(image, 1.0 + amount, blurred, -amount, 0.0)
    return out if out.dtype == np.uint8 else np.clip(out, 0.0, 1.0, out=out)


class Sharpener:
    """Turns frames into sharpened frames with one engine; tilers are made per frame size.

    ``tile`` is the core tile size (0 = whole frame, None = measure both on the
    first frame size and keep the faster, timed by ``clock``).
    """

    AUTO_CANDIDATES = (256, 0)

    def __init__(self, engine: Engine, tile=None, warn: Optional[Callable[[str], None]] = None,
                 clock: Callable[[], float] = time.perf_counter):
        self.engine = engine
        self.tile = tile
        self._clock = clock
        self._tilers = {}
        self.model_ms = 0.0
        self.choice_note = ""
        self._warn = warn if warn is not None else _warn_on_stderr
        self.passed_through = 0  # frames sent on unsharpened because the model's output was unusable
        # Taken by the first frame whose output is not finite and never released: shared with
        # siblings, so that frames in flight warn once between them.
        self._not_finite_warning = threading.Lock()
        self._last_input = None
        self._last_rgb = None

    def sibling(self) -> "Sharpener":
        """A sharpener over the same engine and tiling with buffers and a last frame of its
        own, to sharpen frames beside this one (the pipeline's frames in flight)."""
        twin = Sharpener(self.engine, tile=self.tile, warn=self._warn, clock=self._clock)
        twin._not_finite_warning = self._not_finite_warning
        return twin

    def tiler(self, height: int, width: int) -> Tiler:
        key = (height, width)
        if key not in self._tilers:
            if self.tile is None:
                self.tile = self._measure_fastest(height, width)
            self._tilers[key] = self._make_tiler(height, width, self.tile)
        return self._tilers[key]

    def _make_tiler(self, height, width, tile) -> Tiler:
        if tile and self.engine.reads_whole_frame:
            raise ValueError(tile_problem(tile, self.engine.receptive_radius, self.engine.size_multiple,
                                          reads_whole_frame=True))
        return Tiler(height, width, tile=tile, receptive_radius=self.engine.receptive_radius,
                     size_multiple=self.engine.size_multiple)

    def _measure_fastest(self, height, width, repeats=2) -> int:
        if self.engine.reads_whole_frame:
            return 0  # the only way such a model runs
        timings = {}
        for tile in self.AUTO_CANDIDATES:
            tiler = self._make_tiler(height, width, tile)
            if tile and tiler.grid == (1, 1):
                continue  # one tile is the whole frame with a larger canvas: never faster
            batch = np.zeros(tiler.batch_shape, np.float32)
            self.engine.run(batch)  # warm-up: first runs allocate
            start = self._clock()
            for _ in range(repeats):
                self.engine.run(batch)
            timings[tile] = (self._clock() - start) / repeats * 1000.0
        best = min(timings, key=timings.get)
        if len(timings) == 1:
            return best
        self.choice_note = "auto tiling: " + ", ".join(
            f"{'whole frame' if t == 0 else f'tile {t}'} {ms:.1f} ms" for t, ms in timings.items()
        ) + f" -> {'whole frame' if best == 0 else f'tile {best}'}"
        return best

    # A frame identical to the previous one (a paused or frozen source, a static screen) reuses
    # the model's output: only the blend runs. Equality is exact, on purpose: a camera's sensor
    # noise makes live frames differ, and a tolerance would leave slow real changes unsharpened.
    # The check and the copy cost ~0.5 ms at 720p against ~25 ms for the model.
    def _same_as_last_input(self, frame: np.ndarray) -> bool:
        last = self._last_input
        return (self._last_rgb is not None and last.shape == frame.shape
                and cv2.norm(frame, last, cv2.NORM_INF) == 0)

    def _remember(self, frame: np.ndarray, rgb: np.ndarray) -> None:
        if self._last_input is None or self._last_input.shape != frame.shape:
            self._last_input = np.empty_like(frame)
        np.copyto(self._last_input, frame)  # sources may hand out the same buffer again
        # Either the engine's fresh output or the tiler's buffer, which only the next
        # model run (which replaces this) overwrites.
        self._last_rgb = rgb

    def warm_up(self, height: int, width: int, frame_ms: Optional[float] = None) -> float:
        """Tiling chosen, the engine's choice made (``frame_ms``: the camera's frame
        interval, which the engine chosen must keep up with) and the first run done."""
        tiler = self.tiler(height, width)
        return self.engine.warm_up(tiler.batch_shape, frame_ms=frame_ms)

    def process(self, frame: np.ndarray, state: ControlState) -> np.ndarray:
        if state.mirror:
            frame = cv2.flip(frame, 1)
        if state.mode == "off" or state.strength == 0.0:
            self.model_ms = 0.0
            return frame
        if self._same_as_last_input(frame):
            rgb, self.model_ms = self._last_rgb, 0.0
        else:
            tiler = self.tiler(frame.shape[0], frame.shape[1])
            out = self.engine.run(tiler.to_batch(frame))
            self.model_ms = self.engine.last_ms
            if not output_is_finite(out):
                # NaN turns black in the uint8 blend: a broken model would silently blank the video.
                self._last_rgb = None
                self.passed_through += 1
                if self._not_finite_warning.acquire(blocking=False):
                    self._warn("the model's output is not finite (NaN or infinity); passing frames "
                               "through unsharpened while it is (re-export or retrain the model)")
                return frame
            rgb = tiler.from_batch(out)
            self._remember(frame, rgb)
        result = to_uint8_bgr(rgb, frame, state.strength)
        if state.mode == "split":
            result = draw_split(frame, result)
        return result
