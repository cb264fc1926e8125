"""Synthetic degradations of sharp images: what a cheap webcam does to a frame.

Every degradation is a pure function ``f(image, rng, **strength) -> image`` on an
H×W×3 float32 RGB array in [0, 1]; strengths not given are drawn from ``rng`` (a
``numpy.random.Generator``), so the same seed always gives the same output.
Presets chain them: ``webcam`` (the default: what laptop webcams and calls do, mostly
mild), ``harsh`` (strong blur and low-light noise), ``seed`` (the original project's
σ 0.5 blur), and the two halves of an anchored fine-tune: ``webcam-uncompressed`` (kept)
and ``compressed`` (corrected). ``COMPONENTS`` fixes a mild and a moderate strength per
degradation so evaluation can report each one on its own; `camera_sharp_frame` is a sharp
photo as a webcam sends it (faint noise, its codec), which a student must leave alone.
"""
from __future__ import annotations

import math
from typing import Callable

import cv2
import numpy as np

from training.errors import UsageError

Image = np.ndarray
Degradation = Callable[[Image, np.random.Generator], Image]

_INTERPOLATIONS = {
    "nearest": cv2.INTER_NEAREST,
    "linear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
}


def _as_float(image: Image) -> Image:
    return np.clip(image, 0.0, 1.0).astype(np.float32, copy=False)


def _filter(image: Image, kernel: np.ndarray) -> Image:
    kernel = (kernel / kernel.sum()).astype(np.float32)
    return _as_float(cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REFLECT_101))


def gaussian_blur(image: Image, rng: np.random.Generator, sigma: float | None = None) -> Image:
    """Soft lens / slight focus error. sigma in pixels, drawn from [0.4, 2.0]."""
    if sigma is None:
        sigma = float(rng.uniform(0.4, 2.0))
    radius = max(1, int(math.ceil(3.0 * sigma)))
    return _as_float(cv2.GaussianBlur(image, (2 * radius + 1,) * 2, sigmaX=sigma, sigmaY=sigma,
                                      borderType=cv2.BORDER_REFLECT_101))


def disk_kernel(radius: float) -> np.ndarray:
    size = 2 * int(math.ceil(radius)) + 1
    c = size // 2
    y, x = np.mgrid[:size, :size] - c
    # Anti-aliased edge: the fraction of each pixel inside the disk, approximated
    # by distance, so radius can be fractional.
    return np.clip(radius + 0.5 - np.sqrt(x * x + y * y), 0.0, 1.0)


def defocus_blur(image: Image, rng: np.random.Generator, radius: float | None = None) -> Image:
    """Out-of-focus blur: a uniform disk (the lens aperture). radius from [1, 4] px."""
    if radius is None:
        radius = float(rng.uniform(1.0, 4.0))
    return _filter(image, disk_kernel(radius))


def motion_kernel(length: float, angle_deg: float) -> np.ndarray:
    size = 2 * int(math.ceil(length / 2)) + 1
    kernel = np.zeros((size, size), np.float32)
    c = size // 2
    dx, dy = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    # Dense samples along the segment, drawn with bilinear weights.
    for t in np.linspace(-length / 2, length / 2, int(4 * length) + 1):
        x, y = c + t * dx, c + t * dy
        x0, y0 = int(math.floor(x)), int(math.floor(y))
        fx, fy = x - x0, y - y0
        for xi, yi, w in ((x0, y0, (1 - fx) * (1 - fy)), (x0 + 1, y0, fx * (1 - fy)),
                          (x0, y0 + 1, (1 - fx) * fy), (x0 + 1, y0 + 1, fx * fy)):
            if 0 <= xi < size and 0 <= yi < size:
                kernel[yi, xi] += w
    return kernel


def motion_blur(image: Image, rng: np.random.Generator, length: float | None = None,
                angle: float | None = None) -> Image:
    """Linear camera/subject motion during exposure. length from [3, 15] px, any angle."""
    if length is None:
        length = float(rng.uniform(3.0, 15.0))
    if angle is None:
        angle = float(rng.uniform(0.0, 180.0))
    return _filter(image, motion_kernel(length, angle))


def rescale(image: Image, rng: np.random.Generator, factor: float | None = None,
            down: str | None = None, up: str | None = None) -> Image:
    """Down-then-up scaling (a low-resolution sensor or a call dropping resolution). ×1–3."""
    if factor is None:
        factor = float(rng.uniform(1.0, 3.0))
    names = list(_INTERPOLATIONS)
    if down is None:
        down = names[int(rng.integers(len(names)))]
    if up is None:
        up = ("nearest", "linear", "cubic")[int(rng.integers(3))]
    h, w = image.shape[:2]
    small = cv2.resize(image, (max(1, round(w / factor)), max(1, round(h / factor))),
                       interpolation=_INTERPOLATIONS[down])
    return _as_float(cv2.resize(small, (w, h), interpolation=_INTERPOLATIONS[up]))


def jpeg(image: Image, rng: np.random.Generator, quality: int | None = None) -> Image:
    """JPEG re-compression, as webcams and video calls do. quality from [30, 95]."""
    if quality is None:
        quality = int(rng.integers(30, 96))
    bgr = cv2.cvtColor(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8), cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("OpenCV could not JPEG-encode an image")
    decoded = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0


def sensor_noise(image: Image, rng: np.random.Generator, photons: float | None = None,
                 read_sigma: float | None = None) -> Image:
    """Shot noise (Poisson, `photons` at full scale) plus read noise (Gaussian)."""
    if photons is None:
        # Log-uniform: low light (~30 photons) to bright daylight (~1000).
        photons = float(math.exp(rng.uniform(math.log(30.0), math.log(1000.0))))
    if read_sigma is None:
        read_sigma = float(rng.uniform(0.0, 0.02))
    shot = rng.poisson(np.clip(image, 0, 1) * photons).astype(np.float32) / photons
    read = rng.normal(0.0, read_sigma, size=image.shape).astype(np.float32)
    return _as_float(shot + read)


def camera_frame(image: Image) -> Image:
    """The image rounded to 8 bits, as a webcam delivers every frame (and the last step of
    every evaluation row: all methods compared start from the frame sharpcam would get)."""
    return (np.round(np.clip(image, 0, 1) * 255) / 255).astype(np.float32)


DEGRADATIONS: dict[str, Callable[..., Image]] = {
    "gaussian": gaussian_blur,
    "defocus": defocus_blur,
    "motion": motion_blur,
    "rescale": rescale,
    "jpeg": jpeg,
    "noise": sensor_noise,
}

# Each component at a mild and a moderate fixed strength, for evaluation tables: what a
# slightly soft lens, an indoor sensor, a webcam encoder or a call that drops resolution do.
COMPONENTS: dict[str, dict] = {
    "gaussian_mild": dict(fn="gaussian", sigma=0.7),
    "gaussian": dict(fn="gaussian", sigma=1.2),
    "defocus_mild": dict(fn="defocus", radius=1.2),
    "defocus": dict(fn="defocus", radius=2.0),
    "motion_mild": dict(fn="motion", length=4.0, angle=30.0),
    "motion": dict(fn="motion", length=7.0, angle=30.0),
    "rescale_mild": dict(fn="rescale", factor=1.5, down="area", up="linear"),
    "rescale": dict(fn="rescale", factor=2.0, down="area", up="linear"),
    "jpeg_mild": dict(fn="jpeg", quality=75),
    "jpeg": dict(fn="jpeg", quality=40),
    "noise_mild": dict(fn="noise", photons=1000.0, read_sigma=0.004),
    "noise": dict(fn="noise", photons=200.0, read_sigma=0.008),
}

# A sharp photo as a webcam in good light sends it: a sensor never gives a pristine frame
# (faint shot noise, 20,000 photons at full scale), and most webcams stream MJPEG at
# quality 85–95. The evaluation's "camera_sharp" row: the frame a student must leave
# alone in practice, where the "clean" row's pristine photo is one no camera delivers.
CAMERA_SHARP_PHOTONS = 20000.0
CAMERA_SHARP_QUALITY = 90


def camera_sharp_frame(image: Image, rng: np.random.Generator) -> Image:
    """`image` in focus, through a camera's sensor and its MJPEG codec (nothing softened)."""
    noisy = sensor_noise(image, rng, photons=CAMERA_SHARP_PHOTONS, read_sigma=0.0)
    return jpeg(noisy, rng, quality=CAMERA_SHARP_QUALITY)


UNTOUCHED_SHARE = 0.05


def seed_preset(image: Image, rng: np.random.Generator) -> Image:
    """The original project's data: Gaussian blur with sigma 0.5, nothing else."""
    return gaussian_blur(image, rng, sigma=0.5)


def log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def webcam_preset(image: Image, rng: np.random.Generator) -> Image:
    """What laptop webcams and calls do to a frame: optics -> sensor -> scaling -> codec.

    Every frame is at least a little soft (σ 0.4–1.6 px, log-uniform so mild softness is
    as common as moderate: a cheap lens, slightly missed focus, or small motion), a quarter carry the residual noise a webcam's own denoiser
    leaves in daylight or a lit room, half are JPEG 50–95, a quarter went through a call's
    down-up scaling. 5 % come back untouched (the same array), so the model also sees
    sharp frames. Strong blur and low-light noise are left to `harsh`: trained on them, or
    on many unblurred frames, a small network learns that leaving frames alone or
    smoothing them is the cheapest win, and stops sharpening.
    """
    return _webcam_chain(image, rng, in_focus_compressed=0.0)


def webcam_uncompressed_preset(image: Image, rng: np.random.Generator) -> Image:
    """`webcam` without its codec: softness, scaling and noise, never JPEG (a camera's raw
    stream). What an anchored fine-tune keeps (`distill --anchor`): on these frames the
    student it starts from is already trusted."""
    return _webcam_chain(image, rng, in_focus_compressed=0.0, codec=False)


COMPRESSED_IN_FOCUS_SHARE = 0.6


def compressed_preset(image: Image, rng: np.random.Generator) -> Image:
    """Every frame through the codec: 60 % in focus at JPEG 50–85 (a quarter with daylight
    noise first), the rest softened by the `webcam` chain and then JPEG 50–95. Compression
    that a student must not mistake for blur, beside the compressed soft frames that
    still want sharpening; at JPEG 50–85 the blocks show (`block_edge_contrast`)."""
    if rng.random() < COMPRESSED_IN_FOCUS_SHARE:
        out = image
        if rng.random() < 0.25:
            out = sensor_noise(out, rng, photons=log_uniform(rng, 600.0, 4000.0),
                               read_sigma=float(rng.uniform(0.0, 0.004)))
        return jpeg(out, rng, quality=int(rng.integers(50, 86)))
    return _webcam_chain(image, rng, in_focus_compressed=0.0, untouched=False, codec_share=1.0)


def _webcam_chain(image: Image, rng: np.random.Generator, in_focus_compressed: float, codec: bool = True,
                  untouched: bool = True, codec_share: float = 0.5) -> Image:
    if untouched and rng.random() < UNTOUCHED_SHARE:
        return image
    if in_focus_compressed and rng.random() < in_focus_compressed:  # no draw at 0: `webcam` stays as it was
        # In focus, then the sensor and the codec: compression that a student must not
        # mistake for blur.
        out = image
        if rng.random() < 0.25:
            out = sensor_noise(out, rng, photons=log_uniform(rng, 600.0, 4000.0),
                               read_sigma=float(rng.uniform(0.0, 0.004)))
        return jpeg(out, rng, quality=int(rng.integers(50, 96)))
    # Log-uniform strengths: as many frames between σ 0.4 and 0.8 as between 0.8 and 1.6.
    kind = rng.random()
    if kind < 0.6:
        out = gaussian_blur(image, rng, sigma=log_uniform(rng, 0.4, 1.6))
    elif kind < 0.8:
        out = defocus_blur(image, rng, radius=log_uniform(rng, 0.7, 2.2))
    else:
        out = motion_blur(image, rng, length=log_uniform(rng, 1.5, 7.0))
    if rng.random() < 0.25:
        out = rescale(out, rng, factor=float(rng.uniform(1.2, 2.0)),
                      down=("area", "linear")[int(rng.integers(2))],
                      up=("linear", "cubic")[int(rng.integers(2))])
    if rng.random() < 0.25:
        out = sensor_noise(out, rng, photons=log_uniform(rng, 600.0, 4000.0),
                           read_sigma=float(rng.uniform(0.0, 0.004)))
    if codec and rng.random() < codec_share:
        out = jpeg(out, rng, quality=int(rng.integers(50, 96)))
    return out


IN_FOCUS_COMPRESSED_SHARE = 0.1


def webcam_compressed_preset(image: Image, rng: np.random.Generator) -> Image:
    """`webcam`, with a tenth of the crops left in focus and always JPEG 50–95 (a quarter
    with daylight noise first): sharp-but-compressed frames, which the student should
    leave alone rather than sharpen."""
    return _webcam_chain(image, rng, in_focus_compressed=IN_FOCUS_COMPRESSED_SHARE)


def harsh_preset(image: Image, rng: np.random.Generator) -> Image:
    """A harsh random webcam chain (blur up to σ 2, defocus 4 px, motion 15 px, 30-photon
    noise, JPEG 30; 10 % untouched): for teachers and experiments. Students trained on it
    smooth."""
    if rng.random() < 0.1:
        return image
    out = image
    applied = False
    # Optics: at most one blur kind (they model the same lens, stacking them is unrealistic).
    if rng.random() < 0.8:
        blur = ("gaussian", "defocus", "motion")[int(rng.integers(3))]
        out = DEGRADATIONS[blur](out, rng)
        applied = True
    if rng.random() < 0.4:
        out = sensor_noise(out, rng)
        applied = True
    if rng.random() < 0.3:
        out = rescale(out, rng)
        applied = True
    if rng.random() < 0.5 or not applied:
        out = jpeg(out, rng)
    return out


PRESETS: dict[str, Degradation] = {"webcam": webcam_preset, "webcam-compressed": webcam_compressed_preset,
                                   "webcam-uncompressed": webcam_uncompressed_preset,
                                   "compressed": compressed_preset, "harsh": harsh_preset, "seed": seed_preset}


def get_preset(name: str) -> Degradation:
    if name not in PRESETS:
        raise UsageError(f"unknown degradation preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def component(name: str) -> Degradation:
    """The named degradation at its fixed evaluation strength (still a function of (image, rng))."""
    strength = dict(COMPONENTS[name])
    fn = DEGRADATIONS[strength.pop("fn")]
    return lambda image, rng: fn(image, rng, **strength)
