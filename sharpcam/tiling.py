"""Tiling: cutting a frame into model-sized windows and putting the result back.

Owns the geometry that makes tiled inference exact. The frame is reflect-padded
once, at the bottom and right only, to a multiple of the model's
``size_multiple``; that canvas is what whole-frame mode runs in one call, at no
extra cost. The student downsamples internally, so a window only reproduces the
whole-frame result if its origin is a multiple of ``size_multiple`` and every
output pixel it keeps has ``receptive_radius`` pixels of context inside the
window, or sits that close to the canvas edge, where the whole-frame run sees
the same edge. Windows are therefore the core tile plus a margin (the radius
rounded up to the multiple) on each side, slid inwards at the canvas edges, and
run as one batch.
"""
from __future__ import annotations

import math
from typing import Optional

import cv2
import numpy as np

_INV_255 = np.float32(1.0 / 255.0)


def round_up(value: int, multiple: int) -> int:
    return -(-int(value) // multiple) * multiple


def min_useful_tile(receptive_radius: int, size_multiple: int) -> int:
    """The smallest tile worth running: twice the margin, where a tile computes at most
    4x the pixels it keeps (a smaller one pays more for its context than for its output)."""
    return max(size_multiple, round_up(2 * round_up(receptive_radius, size_multiple), size_multiple))


def tile_problem(tile: int, receptive_radius: int, size_multiple: int,
                 reads_whole_frame: bool = False) -> Optional[str]:
    """Why ``--tile tile`` is not worth running with this model, or None (0 = whole frame)."""
    if tile == 0:
        return None
    if reads_whole_frame:
        return (f"--tile {tile}: this model reads the whole frame (it judges the camera's "
                "softness from all of it), so tiles would change its output; leave --tile out "
                "or use --tile 0")
    core = round_up(tile, size_multiple)
    smallest = min_useful_tile(receptive_radius, size_multiple)
    if core >= smallest:
        return None
    margin = round_up(receptive_radius, size_multiple)
    work = ((core + 2 * margin) / core) ** 2
    return (f"--tile {tile}: this model needs {margin} px of context on each side of a tile, so a "
            f"{core} px tile computes {work:.0f}x the pixels it outputs; use --tile {smallest} or "
            "more, or --tile 0 (whole frame, no extra work)")


def _window_start(core_start: int, margin: int, window: int, canvas: int) -> int:
    return min(max(core_start - margin, 0), canvas - window)


class Tiler:
    """Geometry and buffers for one frame size.

    ``to_batch(frame)`` turns a BGR uint8 H×W×3 frame into the N×3×h×w float32
    RGB batch the engine wants; ``from_batch(out)`` returns the model's result
    as a 3×H×W float32 RGB array (planar), overlaps cropped away.
    ``tile=0`` means whole frame.
    """

    def __init__(self, height: int, width: int, *, tile: int, receptive_radius: int,
                 size_multiple: int):
        if height < 1 or width < 1:
            raise ValueError(f"frame size must be positive, got {width}x{height}")
        if tile < 0:
            raise ValueError(f"tile size must be >= 0 (0 = whole frame), got {tile}")
        self.height, self.width = int(height), int(width)
        self.multiple = int(size_multiple)
        self.margin = round_up(receptive_radius, self.multiple)
        canvas_h, canvas_w = round_up(self.height, self.multiple), round_up(self.width, self.multiple)
        self.canvas_shape = (canvas_h, canvas_w)
        if tile == 0:
            self.tile = 0
            self.grid = (1, 1)
            self.window = (canvas_h, canvas_w)
            self.origins = [(0, 0)]
            self.cores = [(0, 0, canvas_h, canvas_w)]
        else:
            # A core that is not a multiple would put later tiles off the grid.
            self.tile = round_up(tile, self.multiple)
            rows, cols = math.ceil(canvas_h / self.tile), math.ceil(canvas_w / self.tile)
            self.grid = (rows, cols)
            self.window = (min(self.tile + 2 * self.margin, canvas_h),
                           min(self.tile + 2 * self.margin, canvas_w))
            self.origins, self.cores = [], []
            for r in range(rows):
                for c in range(cols):
                    y, x = r * self.tile, c * self.tile
                    self.origins.append((_window_start(y, self.margin, self.window[0], canvas_h),
                                         _window_start(x, self.margin, self.window[1], canvas_w)))
                    self.cores.append((y, x, min(y + self.tile, canvas_h),
                                       min(x + self.tile, canvas_w)))
        self._canvas = np.empty((canvas_h, canvas_w, 3), np.uint8)
        self._batch = np.empty(self.batch_shape, np.float32)
        self._assembled = (None if self.tile == 0 else np.empty((3, canvas_h, canvas_w), np.float32))

    @property
    def batch_shape(self) -> tuple:
        return (len(self.origins), 3) + self.window

    @property
    def work_ratio(self) -> float:
        """Pixels the model computes per output pixel (1.0 would be free padding)."""
        n, _, h, w = self.batch_shape
        return n * h * w / (self.height * self.width)

    def pad(self, frame: np.ndarray) -> np.ndarray:
        if frame.shape[:2] != (self.height, self.width):
            raise ValueError(f"frame is {frame.shape[1]}x{frame.shape[0]}, tiler was built for "
                             f"{self.width}x{self.height}")
        bottom, right = self.canvas_shape[0] - self.height, self.canvas_shape[1] - self.width
        if bottom == right == 0:
            return frame
        if bottom < self.height and right < self.width:
            return cv2.copyMakeBorder(frame, 0, bottom, 0, right, cv2.BORDER_REFLECT_101,
                                      dst=self._canvas)
        # Pads wider than the frame: numpy's reflect keeps folding where OpenCV refuses.
        self._canvas[...] = np.pad(frame, ((0, bottom), (0, right), (0, 0)), mode="reflect")
        return self._canvas

    def to_batch(self, frame: np.ndarray) -> np.ndarray:
        canvas = self.pad(frame)
        h, w = self.window
        # HWC->CHW as one split into contiguous planes, then BGR->RGB and uint8->float in one
        # contiguous pass per plane: a quarter faster at 720p than one strided pass doing all three.
        blue, green, red = cv2.split(canvas)
        for k, (y, x) in enumerate(self.origins):
            for c, plane in enumerate((red, green, blue)):
                np.multiply(plane[y:y + h, x:x + w], _INV_255, out=self._batch[k, c])
        return self._batch

    def from_batch(self, out: np.ndarray) -> np.ndarray:
        H, W = self.height, self.width
        if self.tile == 0:
            return out[0, :, :H, :W]
        for k, ((wy, wx), (y0, x0, y1, x1)) in enumerate(zip(self.origins, self.cores)):
            self._assembled[:, y0:y1, x0:x1] = out[k, :, y0 - wy:y1 - wy, x0 - wx:x1 - wx]
        return self._assembled[:, :H, :W]

    def describe(self) -> str:
        if self.tile == 0:
            return f"whole frame {self.window[1]}x{self.window[0]} ({self.work_ratio:.2f}x work)"
        rows, cols = self.grid
        return (f"{rows}x{cols} tiles of {self.tile} in {self.window[1]}x{self.window[0]} windows "
                f"(margin {self.margin}, {self.work_ratio:.2f}x work)")
