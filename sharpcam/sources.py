"""Frame sources: their contract (``Source``), a webcam, a video file, and the built-in demo.

Every source yields BGR uint8 H×W×3 frames through ``read()``, which returns
``None`` when no frame could be had (camera unplugged, end of file).  Sources
say whether they pace themselves (a camera blocks until the next frame) or
need pacing by the caller (a file or the demo played live), whether they are
finite, and can be reopened, which is how the pipeline reconnects a camera.
"""
from __future__ import annotations

import glob
import math
import os
import platform
from typing import Optional, Protocol, Union, runtime_checkable

import cv2
import numpy as np

from . import DEMO_IMAGE
from .lifetime import Lifetime
from .quiet import quiet_native_logs


# Where Linux names its video devices (video0/name holds "HD Pro Webcam C920").
V4L2_SYSFS = "/sys/class/video4linux"


class SourceError(Exception):
    """A source cannot be opened; the message says what to do."""


@runtime_checkable
class Source(Protocol):
    """What the pipeline reads frames from; every source in this module is one.

    Written for readers and type checkers, as pyvirtualcam's ``Backend`` is: nothing
    inherits from it. ``open()`` acquires the camera or file and returns the source (``with
    source:`` opens it and always closes it); ``close()`` releases it and may be called again.
    Once open, ``width``, ``height`` and ``fps`` are what the source really delivers.
    """

    width: int
    height: int
    fps: float
    #: ``read()`` blocks until the next frame arrives (a camera); otherwise the caller paces it.
    self_paced: bool
    #: The source ends by itself (a file played once); an endless one that returns None is lost.
    finite: bool
    #: Frames a finite source holds, when it says; 0 when unknown or endless.
    frame_count: int

    def open(self) -> "Source":
        """Acquire the device or file; raises SourceError saying what to do."""

    def read(self) -> Optional[np.ndarray]:
        """The next BGR uint8 H×W×3 frame, or None when none could be had."""

    def reopen(self) -> bool:
        """One attempt to get a lost source back; whether it worked."""

    def describe(self) -> str:
        """One line for the user: what is read, at what size and rate."""

    def close(self) -> None:
        """Release what ``open`` acquired; harmless when closed already."""

    def __enter__(self) -> "Source": ...

    def __exit__(self, *exc) -> Optional[bool]: ...


def _fourcc_text(value: float) -> str:
    code = int(value)
    text = "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4))
    return text if text.isprintable() and text.strip() else "?"


def _camera_api() -> int:
    system = platform.system()
    if system == "Linux":
        return cv2.CAP_V4L2
    if system == "Windows":
        return cv2.CAP_DSHOW  # MSMF takes seconds to open and ignores MJPG requests on many cameras
    if system == "Darwin":
        return cv2.CAP_AVFOUNDATION
    return cv2.CAP_ANY


class CameraSource(Lifetime):
    """A webcam by index (``0``) or device path (``/dev/video2``)."""

    self_paced = True
    finite = False
    frame_count = 0

    def __init__(self, device: Union[int, str] = 0, *, width: int = 1280, height: int = 720,
                 fps: float = 30.0, mjpg: bool = True):
        self.device = int(device) if str(device).isdigit() else device
        self.requested = (int(width), int(height), float(fps))
        self.mjpg = mjpg
        self._cap = None
        self.width, self.height, self.fps = int(width), int(height), float(fps)
        self.fourcc = "?"

    def _open_capture(self):
        quiet_native_logs()
        cap = cv2.VideoCapture(self.device, _camera_api())
        if not cap.isOpened():
            cap.release()
            cap = cv2.VideoCapture(self.device)
        if not cap.isOpened():
            cap.release()
            return None, None
        width, height, fps = self.requested
        if self.mjpg:
            # Uncompressed YUYV over USB 2 tops out near 10 frames/s at 720p; MJPG reaches 30.
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*"MJPG"))
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        cap.set(cv2.CAP_PROP_FPS, fps)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # keep the driver from queueing stale frames
        ok, frame = cap.read()
        if not ok or frame is None:
            cap.release()
            return None, None
        return cap, frame

    def open(self) -> "CameraSource":
        cap, frame = self._open_capture()
        if cap is None:
            raise SourceError(
                f"camera {self.device!r} could not be opened: it is missing or in use by another "
                "app (close the other app); see `sharpcam --list-cameras`, or try `sharpcam --demo`")
        self._adopt(cap, frame)
        return self

    def _adopt(self, cap, frame) -> None:
        self._cap = cap
        self.height, self.width = frame.shape[:2]
        reported = cap.get(cv2.CAP_PROP_FPS)
        self.fps = reported if reported and 1 <= reported <= 240 else self.requested[2]
        self.fourcc = _fourcc_text(cap.get(cv2.CAP_PROP_FOURCC))
        self._first = frame

    def read(self) -> Optional[np.ndarray]:
        if self._cap is None:
            return None
        if self._first is not None:
            frame, self._first = self._first, None
            return frame
        ok, frame = self._cap.read()
        return frame if ok and frame is not None else None

    def reopen(self) -> bool:
        self.close()
        cap, frame = self._open_capture()
        if cap is None:
            return False
        self._adopt(cap, frame)
        return True

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def describe(self) -> str:
        w, h, f = self.requested
        delivered = f"{self.width}x{self.height} at {self.fps:g} fps ({self.fourcc})"
        if (self.width, self.height) != (w, h) or abs(self.fps - f) > 0.5:
            return f"camera {self.device}: asked {w}x{h} at {f:g} fps, camera delivers {delivered}"
        return f"camera {self.device}: {delivered}"


class VideoFileSource(Lifetime):
    """Frames from a video file, optionally looping forever."""

    self_paced = False

    def __init__(self, path: str, *, loop: bool = False):
        self.path = os.fspath(path)
        self.loop = loop
        self.finite = not loop
        self._cap = None
        self.width = self.height = 0
        self.fps = 30.0
        self.frame_count = 0

    def open(self) -> "VideoFileSource":
        if os.path.isdir(self.path):
            raise SourceError(f"--input {self.path} is a directory; give a video file in it")
        if not os.path.isfile(self.path):
            raise SourceError(f"input file not found: {self.path}")
        quiet_native_logs()
        cap = cv2.VideoCapture(self.path)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot read video {self.path}: not a video OpenCV can decode")
        ok, frame = cap.read()
        if not ok or frame is None:
            cap.release()
            raise SourceError(f"video {self.path} has no readable frames")
        self._cap, self._first = cap, frame
        self.height, self.width = frame.shape[:2]
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if fps and 1 <= fps <= 240 else 30.0
        self.frame_count = max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT)))
        return self

    def read(self) -> Optional[np.ndarray]:
        if self._cap is None:
            return None
        if self._first is not None:
            frame, self._first = self._first, None
            return frame
        ok, frame = self._cap.read()
        if ok and frame is not None:
            return frame
        if self.loop:
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = self._cap.read()
            if ok and frame is not None:
                return frame
        return None

    def reopen(self) -> bool:
        self.close()
        try:
            self.open()
        except SourceError:
            return False
        return True

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def describe(self) -> str:
        count = f", {self.frame_count} frames" if self.frame_count else ""
        return f"file {self.path}: {self.width}x{self.height} at {self.fps:g} fps{count}" + (
            ", looping" if self.loop else "")


class DemoSource(Lifetime):
    """A slow pan and zoom over the bundled photo, degraded like a cheap webcam.

    The degradation (defocus blur, down/up-scaling, JPEG, sensor noise) is
    deterministic for a given seed and frame index, so runs are reproducible.
    """

    self_paced = False
    finite = False
    frame_count = 0

    def __init__(self, *, width: int = 1280, height: int = 720, fps: float = 30.0, seed: int = 0,
                 image: str = DEMO_IMAGE, blur_sigma: float = 1.6, scale: float = 0.5,
                 jpeg_quality: int = 55, noise_sigma: float = 2.5):
        self.width, self.height, self.fps = int(width), int(height), float(fps)
        self.seed = seed
        self.image = image
        self.blur_sigma, self.scale = blur_sigma, scale
        self.jpeg_quality, self.noise_sigma = jpeg_quality, noise_sigma
        self.index = 0
        self._photo = None

    def open(self) -> "DemoSource":
        photo = cv2.imread(self.image, cv2.IMREAD_COLOR)
        if photo is None:
            raise SourceError(f"demo photo missing or unreadable: {self.image} (reinstall sharpcam)")
        self._photo = photo
        rng = np.random.default_rng(self.seed)
        # A few precomputed noise fields: drawing fresh gaussian noise per 720p frame costs ~20 ms.
        # Each is kept as its positive and negative parts in uint8, so adding one is two
        # saturating 8-bit passes (0.5 ms at 720p) instead of a pass through int16 (1.2 ms);
        # the demo shares the CPU with the model, so what it costs comes off the frame rate.
        self._noise = []
        for _ in range(4):
            field = np.rint(rng.normal(0, self.noise_sigma, (self.height, self.width, 3)))
            self._noise.append((np.clip(field, 0, 255).astype(np.uint8),
                                np.clip(-field, 0, 255).astype(np.uint8)))
        self._phase = rng.uniform(0, 2 * math.pi, 3)
        self.index = 0
        return self

    def _view(self, t: float, width: int, height: int) -> np.ndarray:
        ph, pw = self._photo.shape[:2]
        aspect = width / height
        zoom = 1.25 + 0.2 * math.sin(0.21 * t + self._phase[0])
        view_w = min(pw, ph * aspect) / zoom
        view_h = view_w / aspect
        cx = pw / 2 + (pw - view_w) / 2 * 0.9 * math.sin(0.13 * t + self._phase[1])
        cy = ph / 2 + (ph - view_h) / 2 * 0.9 * math.sin(0.17 * t + self._phase[2])
        s = width / view_w
        m = np.array([[s, 0, width / 2 - s * cx], [0, s, height / 2 - s * cy]], np.float32)
        # Bilinear, not bicubic: the view is blurred next, which hides the difference, and
        # it is 2.5x cheaper.
        return cv2.warpAffine(self._photo, m, (width, height), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REFLECT_101)

    def render(self, index: int) -> np.ndarray:
        # Blur and compress at the reduced resolution, as a cheap sensor and its
        # encoder do; that also keeps the demo's own cost small next to the model's.
        small_w = max(16, round(self.width * self.scale))
        small_h = max(16, round(self.height * self.scale))
        frame = self._view(index / self.fps, small_w, small_h)
        if self.blur_sigma > 0:
            frame = cv2.GaussianBlur(frame, (0, 0), self.blur_sigma * self.scale)
        ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        frame = cv2.imdecode(jpeg, cv2.IMREAD_COLOR)
        frame = cv2.resize(frame, (self.width, self.height), interpolation=cv2.INTER_LINEAR)
        brighter, darker = self._noise[index % len(self._noise)]
        return cv2.subtract(cv2.add(frame, brighter), darker)

    def read(self) -> Optional[np.ndarray]:
        if self._photo is None:
            return None
        frame = self.render(self.index)
        self.index += 1
        return frame

    def reopen(self) -> bool:
        return True

    def close(self) -> None:
        self._photo = None

    def describe(self) -> str:
        return f"demo: {self.width}x{self.height} at {self.fps:g} fps (degraded photo, seed {self.seed})"


def list_cameras(max_index: int = 10) -> list:
    """(device, description) for every camera OpenCV can open and read."""
    quiet_native_logs()
    found = []
    candidates = list(range(max_index))
    if platform.system() == "Linux":
        nodes = sorted(glob.glob("/dev/video*"), key=lambda p: int(p[10:]) if p[10:].isdigit() else 999)
        candidates = [int(p[10:]) for p in nodes if p[10:].isdigit()]
    for index in candidates:
        cap = cv2.VideoCapture(index, _camera_api())
        try:
            if not cap.isOpened():
                continue
            ok, frame = cap.read()
            if not ok or frame is None:
                continue  # metadata nodes and v4l2loopback outputs open but deliver nothing
            fps = cap.get(cv2.CAP_PROP_FPS)
            name = ""
            sysfs = os.path.join(V4L2_SYSFS, f"video{index}", "name")
            if os.path.exists(sysfs):
                with open(sysfs) as f:
                    name = " " + f.read().strip()
            found.append((index, f"{frame.shape[1]}x{frame.shape[0]} at {fps:g} fps{name}"))
        finally:
            cap.release()
    return found
