"""Tiling: cutting a frame into model-sized windows and putting the result back.

Owns the geometry that makes tiled inference exact.  The student downsamples
internally, so a window only reproduces the whole-frame result if its origin
in the padded frame is a multiple of the model's ``size_multiple`` and it
carries at least ``receptive_radius`` pixels of context on every side.  The
frame is therefore reflect-padded once (margin = radius rounded up to the
multiple), and both modes run on that same padded canvas: whole-frame mode in
one call, tiled mode as aligned windows of ``tile + 2·margin`` in one batch.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

_INV_255 = np.float32(1.0 / 255.0)


def round_up(value: int, multiple: int) -> int:
    return -(-int(value) // multiple) * multiple


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
        if tile == 0:
            self.tile = 0
            canvas_h = round_up(self.height + 2 * self.margin, self.multiple)
            canvas_w = round_up(self.width + 2 * self.margin, self.multiple)
            self.grid = (1, 1)
            self.window = (canvas_h, canvas_w)
            self.origins = [(0, 0)]
        else:
            # A core that is not a multiple would put later tiles off the grid.
            self.tile = round_up(tile, self.multiple)
            rows, cols = math.ceil(self.height / self.tile), math.ceil(self.width / self.tile)
            canvas_h = rows * self.tile + 2 * self.margin
            canvas_w = cols * self.tile + 2 * self.margin
            self.grid = (rows, cols)
            side = self.tile + 2 * self.margin
            self.window = (side, side)
            self.origins = [(r * self.tile, c * self.tile) for r in range(rows) for c in range(cols)]
        self.canvas_shape = (canvas_h, canvas_w)
        self._pad = (self.margin, canvas_h - self.height - self.margin,
                     self.margin, canvas_w - self.width - self.margin)
        self._canvas = np.empty((canvas_h, canvas_w, 3), np.uint8)
        self._batch = np.empty(self.batch_shape, np.float32)
        self._assembled = (None if self.tile == 0 else
                           np.empty((3, self.grid[0] * self.tile, self.grid[1] * self.tile), np.float32))

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
        top, bottom, left, right = self._pad
        if max(top, bottom) < self.height and max(left, right) < self.width:
            return cv2.copyMakeBorder(frame, top, bottom, left, right, cv2.BORDER_REFLECT_101,
                                      dst=self._canvas)
        # Pads wider than the frame: numpy's reflect keeps folding where OpenCV refuses.
        self._canvas[...] = np.pad(frame, ((top, bottom), (left, right), (0, 0)), mode="reflect")
        return self._canvas

    def to_batch(self, frame: np.ndarray) -> np.ndarray:
        canvas = self.pad(frame)
        h, w = self.window
        # BGR->RGB, HWC->CHW and uint8->float happen in this one strided pass.
        for k, (y, x) in enumerate(self.origins):
            np.multiply(canvas[y:y + h, x:x + w, ::-1].transpose(2, 0, 1), _INV_255,
                        out=self._batch[k])
        return self._batch

    def from_batch(self, out: np.ndarray) -> np.ndarray:
        m, H, W = self.margin, self.height, self.width
        if self.tile == 0:
            return out[0, :, m:m + H, m:m + W]
        t = self.tile
        for k, (y, x) in enumerate(self.origins):
            self._assembled[:, y:y + t, x:x + t] = out[k, :, m:m + t, m:m + t]
        return self._assembled[:, :H, :W]

    def describe(self) -> str:
        if self.tile == 0:
            return (f"whole frame {self.window[1]}x{self.window[0]} "
                    f"(margin {self.margin}, {self.work_ratio:.2f}x work)")
        rows, cols = self.grid
        return (f"{rows}x{cols} tiles of {self.tile} in {self.window[1]}x{self.window[0]} windows "
                f"(margin {self.margin}, {self.work_ratio:.2f}x work)")
