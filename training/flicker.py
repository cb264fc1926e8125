"""Steadiness over time: how much a sharpener makes a video flicker, and whether it still
sharpens its edges.

Sharpening amplifies sensor noise, and noise is new in every frame, so a filter that
looks fine on one still image can shimmer on a face or a wall in a call. Two synthetic
clips, both from a sharp held-out photo softened once (Gaussian σ 1, a soft webcam lens)
with fresh sensor noise in every frame, rounded to 8 bits as a camera delivers them:
- ``static``: the camera and the scene stand still;
- ``pan``: the view slides sideways a few pixels a frame. The motion is known exactly,
  so frames are compensated by shifting them back, with no optical-flow error.

Measures, in 8-bit levels of luma:
- ``flicker``: mean |frameₜ − frameₜ₋₁| (motion-compensated) over the flat areas of the
  scene, where any change between frames is noise the viewer sees as shimmer;
- ``edge_contrast``: mean gradient magnitude of the clip's time-average at the scene's
  edges, as a share of the sharp photo's: below 1 is soft, 1 is as sharp as the photo.
Both are 0-safe: a constant clip has flicker 0 whatever the restorer does.
"""
from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

from training.degrade import camera_frame, gaussian_blur, sensor_noise

Restorer = Callable[[np.ndarray], np.ndarray]  # H×W×3 float RGB [0, 1] -> same

FRAMES = 8
PAN_STEP = 3                 # pixels per frame, a slow pan
NOISE = dict(photons=300.0, read_sigma=0.006)  # an indoor webcam
SOFTNESS = 1.0               # Gaussian σ of the lens


def luma(image: np.ndarray) -> np.ndarray:
    return 255.0 * (0.299 * image[..., 0] + 0.587 * image[..., 1] + 0.114 * image[..., 2])


def gradient_magnitude(y: np.ndarray) -> np.ndarray:
    gx = cv2.Sobel(y, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(y, cv2.CV_32F, 0, 1, ksize=3)
    return np.sqrt(gx * gx + gy * gy)


def scene_masks(sharp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(flat, edges): the 40 % least and the 10 % most textured pixels of the sharp photo,
    judged on a lightly smoothed luma so single noisy pixels do not count as texture."""
    g = gradient_magnitude(cv2.GaussianBlur(luma(sharp).astype(np.float32), (0, 0), 1.0))
    return g <= np.percentile(g, 40), g >= np.percentile(g, 90)


def static_clip(sharp: np.ndarray, seed: int, frames: int = FRAMES) -> list[np.ndarray]:
    rng = np.random.default_rng([seed, 1])
    soft = gaussian_blur(sharp, rng, sigma=SOFTNESS)
    return [camera_frame(sensor_noise(soft, rng, **NOISE)) for _ in range(frames)]


def pan_clip(sharp: np.ndarray, seed: int, frames: int = FRAMES, step: int = PAN_STEP) -> list[np.ndarray]:
    """A window sliding right over `sharp` by `step` pixels a frame: frame t shows the
    scene's column x at column x − t·step."""
    rng = np.random.default_rng([seed, 2])
    width = sharp.shape[1] - step * (frames - 1)
    soft = gaussian_blur(sharp, rng, sigma=SOFTNESS)
    return [camera_frame(sensor_noise(soft[:, t * step:t * step + width], rng, **NOISE)) for t in range(frames)]


def flicker(frames: list[np.ndarray], flat: np.ndarray, step: int = 0) -> float:
    """Mean |frameₜ − frameₜ₋₁| over the `flat` mask (in scene coordinates), comparing the
    same scene point: frame t is read at the scene columns every frame shows, shifted by
    t·step."""
    if len(frames) < 2:
        raise ValueError("flicker needs at least two frames")
    width = frames[0].shape[1]
    first = (len(frames) - 1) * step  # the first scene column that every frame shows
    if first >= width:
        raise ValueError("the pan is too fast for the frame width: no column is in every frame")
    views = [luma(f)[:, first - t * step:width - t * step] for t, f in enumerate(frames)]
    mask = flat[:, first:width]
    return float(np.mean([np.abs(b - a)[mask].mean() for a, b in zip(views[:-1], views[1:])]))


def edge_contrast(frames: list[np.ndarray], sharp: np.ndarray, edges: np.ndarray) -> float:
    mean = np.mean([luma(f) for f in frames], axis=0).astype(np.float32)
    reference = gradient_magnitude(luma(sharp).astype(np.float32))[edges].mean()
    return float(gradient_magnitude(mean)[edges].mean() / max(reference, 1e-6))


def measure(images: list[np.ndarray], restorers: dict[str, Restorer], seed: int = 0,
            size: tuple[int, int] = (384, 512)) -> dict[str, dict[str, float]]:
    """{method: {measure: value}} averaged over `images` (centre crops of `size`);
    ``input`` is the clip itself."""
    methods = {"input": lambda image: image, **restorers}
    sums: dict[str, dict[str, list[float]]] = {}
    for i, image in enumerate(images):
        h, w = min(size[0], image.shape[0]), min(size[1], image.shape[1])
        y, x = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
        sharp = np.ascontiguousarray(image[y:y + h, x:x + w])
        flat, edges = scene_masks(sharp)
        static = static_clip(sharp, seed + i)
        pan = pan_clip(sharp, seed + i)
        for name, restore in methods.items():
            out_static = [restore(f) for f in static]
            out_pan = [restore(f) for f in pan]
            row = sums.setdefault(name, {})
            row.setdefault("static_flicker", []).append(flicker(out_static, flat))
            row.setdefault("static_edge_contrast", []).append(edge_contrast(out_static, sharp, edges))
            row.setdefault("pan_flicker", []).append(flicker(out_pan, flat, PAN_STEP))
    return {name: {k: float(np.mean(v)) for k, v in row.items()} for name, row in sums.items()}
