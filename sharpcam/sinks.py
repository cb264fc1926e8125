"""Frame sinks: their contract (``Sink``), the virtual camera, a preview window, a video file
and a folder of camera frames.

Each sink takes BGR uint8 H×W×3 frames through ``send(frame)`` and is used
as a context manager.  This module also owns the checks that must happen
before anything opens: whether a display is reachable for the preview (Qt
aborts the whole process otherwise) and whether the output path is writable.
"""
from __future__ import annotations

import collections
import os
import platform
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable, Optional, Protocol, runtime_checkable

import cv2
import numpy as np
import pyvirtualcam

from .atomic_file import write_atomically
from .audio import mux_audio
from .controls import ControlState
from .lifetime import Lifetime
from .quiet import quiet_native_logs


class SinkError(Exception):
    """A sink cannot be opened; the message says what to do."""


class VirtualCameraUnavailable(SinkError):
    """No virtual-camera backend could be opened on this machine."""


@runtime_checkable
class Sink(Protocol):
    """Where the pipeline sends frames; every sink in this module is one.

    Written for readers and type checkers, as pyvirtualcam's ``Backend`` is: nothing
    inherits from it. A sink is made for one frame size and rate; ``open()`` acquires the
    device, window or file and returns the sink (``with sink:`` opens it and always closes
    it), and ``close()`` releases it and may be called again.
    """

    def open(self) -> "Sink":
        """Acquire the device, window or file; raises SinkError saying what to do."""

    def send(self, frame: np.ndarray) -> None:
        """Take one BGR uint8 H×W×3 frame of the size the sink was made for."""

    def describe(self) -> str:
        """One line for the user: where the frames go."""

    def close(self) -> None:
        """Release what ``open`` acquired; harmless when closed already."""

    def __enter__(self) -> "Sink": ...

    def __exit__(self, *exc) -> Optional[bool]: ...


@runtime_checkable
class KeySink(Protocol):
    """A sink that also takes key presses (the preview window). Its keys and its close
    button are only handled while it is polled, so the pipeline calls ``poll_keys()``
    whenever no new frame comes to send (a lost camera, a paused source)."""

    def poll_keys(self) -> None: ...


def virtual_camera_guidance(system: Optional[str] = None) -> str:
    system = system or platform.system()
    if system == "Linux":
        how = ("load the v4l2loopback driver: "
               "`sudo modprobe v4l2loopback devices=1 exclusive_caps=1 card_label=SharpCam` "
               "(install it with `sudo apt install v4l2loopback-dkms`; some Zoom builds list the "
               "camera only when loaded without exclusive_caps=1)")
    elif system in ("Windows", "Darwin"):
        how = ("install OBS Studio (https://obsproject.com) and click 'Start Virtual Camera' "
               "once, then close OBS")
    else:
        how = "install a virtual camera supported by pyvirtualcam"
    return (f"no virtual camera available: {how}; then rerun sharpcam. "
            "To just look at the result, use --preview (or --output FILE)")


class VirtualCameraSink(Lifetime):
    """Frames to a virtual camera through pyvirtualcam, in BGR to skip a conversion."""

    def __init__(self, width: int, height: int, fps: float, *, device: Optional[str] = None):
        self.width, self.height, self.fps = width, height, fps
        self.device = device
        self._cam = None

    def open(self) -> "VirtualCameraSink":
        try:
            self._cam = pyvirtualcam.Camera(self.width, self.height, self.fps,
                                            fmt=pyvirtualcam.PixelFormat.BGR,
                                            device=self.device)
        except RuntimeError as exc:
            detail = " ".join(str(exc).split())
            if self.device:
                raise VirtualCameraUnavailable(
                    f"virtual camera {self.device!r} cannot be opened ({detail}); check the name "
                    "with `v4l2-ctl --list-devices` or drop --cam-device") from None
            raise VirtualCameraUnavailable(virtual_camera_guidance()) from None
        return self

    def send(self, frame: np.ndarray) -> None:
        self._cam.send(frame)

    def describe(self) -> str:
        if self._cam is None:
            return "virtual camera (closed)"
        return f"virtual camera {self._cam.device} ({self._cam.backend}) {self.width}x{self.height}@{self.fps:g}"

    def close(self) -> None:
        if self._cam is not None:
            self._cam.close()
            self._cam = None


def display_problem(timeout: float = 15.0) -> Optional[str]:
    """Why a preview window cannot open here, or None if it can.

    OpenCV's Qt backend calls abort() when it cannot reach a display, which
    no Python code can catch, so the probe opens a window in a subprocess.
    """
    system = platform.system()
    if system in ("Windows", "Darwin"):
        return None
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        return ("--preview needs a display, and neither DISPLAY nor WAYLAND_DISPLAY is set "
                "(over ssh use `ssh -X`; on a headless machine use --output FILE instead)")
    probe = ("import cv2; cv2.namedWindow('sharpcam-probe', cv2.WINDOW_AUTOSIZE); "
             "cv2.waitKey(1); cv2.destroyAllWindows()")
    try:
        result = subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "--preview: opening a test window timed out; the display does not answer"
    if result.returncode != 0:
        where = os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
        return (f"--preview cannot open a window on display {where!r} (is it running and are "
                "you allowed to use it?); use --output FILE instead")
    return None


LABEL_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _draw_label(frame: np.ndarray, text: str, x: int, scale: float) -> None:
    (tw, th), base = cv2.getTextSize(text, LABEL_FONT, scale, 1)
    pad, top = 3, 4
    x0, y0, x1, y1 = x, top, min(frame.shape[1], x + tw + 2 * pad), top + th + base + 2 * pad
    # Darkened, not blacked out: the label stays readable without hiding the picture.
    frame[y0:y1, x0:x1] //= 2
    cv2.putText(frame, text, (x0 + pad, y0 + pad + th), LABEL_FONT, scale, (255, 255, 255), 1,
                cv2.LINE_AA)


def draw_preview_labels(frame: np.ndarray, state: ControlState, fps: float) -> np.ndarray:
    """A copy of ``frame`` with small labels in its top rows: what the picture (or each half of
    the split view) shows, the strength and the frames per second. Preview only: the copy
    keeps the labels out of the frame the virtual camera and the file receive."""
    out = frame.copy()
    scale = max(0.35, min(0.7, out.shape[0] / 1800))
    rate = f"{fps:.0f} fps" if fps else ""
    sharpened = " | ".join(t for t in ("SharpCam", f"strength {state.strength:.1f}", rate) if t)
    if state.mode == "split":
        _draw_label(out, "original", 4, scale)
        _draw_label(out, sharpened, out.shape[1] // 2 + 4, scale)
    elif state.mode == "off":
        _draw_label(out, " | ".join(t for t in ("original", rate) if t), 4, scale)
    else:
        _draw_label(out, sharpened, 4, scale)
    return out


class PreviewSink(Lifetime):
    """An OpenCV window; keys pressed in it go to the controls like terminal keys.

    With ``state`` (returns the current ControlState) the window labels what it shows."""

    def __init__(self, on_key: Callable[[str], None], *, title: str = "SharpCam preview",
                 on_close: Optional[Callable[[], None]] = None,
                 state: Optional[Callable[[], ControlState]] = None,
                 clock: Callable[[], float] = time.perf_counter):
        self.title = title
        self._on_key = on_key
        self._on_close = on_close
        self._state = state
        self._clock = clock
        self._sent_at = collections.deque(maxlen=30)  # recent send times, for the frame rate
        self._open = False
        self._shown = 0

    def open(self) -> "PreviewSink":
        # OpenCV's bundled Qt looks for fonts inside the wheel, finds none and warns on every
        # frame; point it at the system's fonts when they are there.
        for fonts in ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/truetype", "/usr/share/fonts"):
            if os.path.isdir(fonts):
                os.environ.setdefault("QT_QPA_FONTDIR", fonts)
                break
        cv2.namedWindow(self.title, cv2.WINDOW_NORMAL | cv2.WINDOW_KEEPRATIO)
        self._open = True
        return self

    @property
    def fps(self) -> float:
        times = self._sent_at
        return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0

    def send(self, frame: np.ndarray) -> None:
        self._sent_at.append(self._clock())
        if self._state is not None:
            frame = draw_preview_labels(frame, self._state(), self.fps)
        cv2.imshow(self.title, frame)
        self._shown += 1
        self.poll_keys()

    def poll_keys(self) -> None:
        key = cv2.waitKey(1)
        if key is not None and key >= 0:
            code = key & 0xFF
            self._on_key(chr(code))
        # Closing the window with the mouse means "quit", as in most preview tools.
        if self._shown > 1 and cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1:
            if self._on_close is not None:
                self._on_close()

    def describe(self) -> str:
        return f"preview window '{self.title}'"

    def close(self) -> None:
        if self._open:
            cv2.destroyWindow(self.title)
            cv2.waitKey(1)
            self._open = False


VIDEO_CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}
# OpenCV's own MJPEG writer keeps any frame size; through FFmpeg, OpenCV rounds odd widths
# and heights down to even (33x17 became 32x16, silently), so only .avi keeps odd sizes.
ANY_SIZE_EXTENSIONS = (".avi",)


def file_creation_refusal(folder: str) -> Optional[str]:
    """Why no file can be created in ``folder``, in the system's words, or None.

    os.access says yes to root everywhere, /proc and /sys included: only creating a file
    (temporary names are created the same way) tells whether the folder takes one."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".sharpcam-probe-")
    except OSError as exc:
        return exc.strerror or str(exc)
    os.close(fd)
    os.remove(probe)
    return None


def check_output_path(path: str) -> Optional[str]:
    """Why ``path`` cannot be written as a video, or None if it can."""
    if os.path.isdir(path):
        return f"--output {path} is a directory; give a file name such as {os.path.join(path, 'out.mp4')}"
    ext = os.path.splitext(path)[1].lower()
    if ext not in VIDEO_CODECS:
        return (f"--output {path}: unknown video type {ext or '(none)'!r}; "
                f"use one of {', '.join(sorted(VIDEO_CODECS))}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return f"--output {path}: folder {folder} does not exist; create it first"
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        return f"--output {path}: no permission to write there; choose another path"
    refusal = file_creation_refusal(folder)
    if refusal:
        return f"--output {path}: cannot create a file in {folder} ({refusal}); choose a folder you can write to"
    return None


class VideoFileSink(Lifetime):
    """Frames to a video file, written under a temporary name and renamed when complete,
    so an interrupted run never leaves a broken file under the requested name.

    With ``audio_from`` (a video file) and ``ffmpeg``, the finished file also gets that
    file's sound, muxed into a second temporary file before the rename; when that fails,
    ``warn`` hears why and the file keeps its pictures."""

    def __init__(self, path: str, width: int, height: int, fps: float, *, realtime: bool = False,
                 clock: Callable[[], float] = time.perf_counter, audio_from: Optional[str] = None,
                 ffmpeg: Optional[str] = None, warn: Callable[[str], None] = lambda message: None):
        self.path = os.fspath(path)
        self.width, self.height, self.fps = width, height, fps
        # Live runs drop frames when the model is slower than the camera; repeating the last
        # frame keeps the recording's timeline true instead of playing back too fast.
        self.realtime, self._clock, self._start = realtime, clock, None
        self.audio_from = os.fspath(audio_from) if audio_from and ffmpeg else None
        self._ffmpeg, self._warn = ffmpeg, warn
        folder, name = os.path.split(os.path.abspath(self.path))
        stem, ext = os.path.splitext(name)
        self.partial_path = os.path.join(folder, f".{stem}.partial{ext}")
        self.muxed_path = os.path.join(folder, f".{stem}.audio{ext}")
        self._writer = None
        self.frames = 0

    def open(self) -> "VideoFileSink":
        problem = check_output_path(self.path)
        if problem:
            raise SinkError(problem)
        ext = os.path.splitext(self.path)[1].lower()
        codec = VIDEO_CODECS[ext]
        if ext not in ANY_SIZE_EXTENSIONS and (self.width % 2 or self.height % 2):
            raise SinkError(f"--output {self.path}: {ext} video needs an even width and height and "
                            f"the frames are {self.width}x{self.height}; use a .avi name, which "
                            "keeps any size")
        quiet_native_logs()
        api = cv2.CAP_OPENCV_MJPEG if ext in ANY_SIZE_EXTENSIONS else cv2.CAP_ANY
        writer = cv2.VideoWriter(self.partial_path, api, cv2.VideoWriter_fourcc(*codec), self.fps,
                                 (self.width, self.height))
        if not writer.isOpened():
            writer.release()
            self._remove_partial()
            raise SinkError(f"--output {self.path}: OpenCV cannot encode {codec} video here; try a .avi name")
        self._writer = writer
        return self

    def send(self, frame: np.ndarray) -> None:
        copies = 1
        if self.realtime:
            now = self._clock()
            if self._start is None:
                self._start = now
            copies = max(1, int((now - self._start) * self.fps) + 1 - self.frames)
        for _ in range(copies):
            self._writer.write(frame)
        self.frames += copies

    def describe(self) -> str:
        return f"video file {self.path} {self.width}x{self.height}@{self.fps:g}"

    def _remove_partial(self) -> None:
        try:
            os.remove(self.partial_path)
        except FileNotFoundError:
            pass

    def close(self, complete: bool = True) -> None:
        if self._writer is None:
            return
        self._writer.release()
        self._writer = None
        if not (complete and self.frames > 0):
            self._remove_partial()
        elif self.audio_from is None:
            os.replace(self.partial_path, self.path)
        else:
            problem = mux_audio(self._ffmpeg, self.partial_path, self.audio_from, self.muxed_path,
                                self.frames / self.fps)
            if problem is None:
                os.replace(self.muxed_path, self.path)
                self._remove_partial()
            else:
                os.replace(self.partial_path, self.path)
                self._warn(f"the sound of {self.audio_from} could not be added to {self.path} "
                           f"(ffmpeg: {problem}); it holds the pictures only")

    def __exit__(self, exc_type, exc, tb) -> bool:
        # Ctrl-C ends a recording the user chose to stop: keep it. Any other error: drop it.
        self.close(complete=exc_type is None or issubclass(exc_type, KeyboardInterrupt))
        return False


def check_frame_folder(folder: str) -> Optional[str]:
    """Why PNG files cannot be saved into ``folder``, or None; makes the folder if missing."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        return f"--save-frames {folder} is a file; give a folder (it is made if missing)"
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        refusal = exc.strerror or str(exc)
    else:
        refusal = file_creation_refusal(folder)
    if refusal:
        return f"--save-frames {folder}: cannot write there ({refusal}); choose a folder you can write to"
    return None


class FrameFolderSink(Lifetime):
    """Every ``every``-th frame it is sent, as a PNG file in ``folder``, at most ``limit`` files
    (``--save-frames``): the camera's own frames, to tune SharpCam to that camera.

    Files are named frame-00001.png on, after any an earlier run left (never overwritten),
    and written under a temporary name and renamed, so the folder never holds half a
    picture. PNG encoding takes tens of milliseconds at 720p, so a thread writes them and
    the call does not stutter; ``send`` waits only if that thread is several files behind.
    A write that fails (a full disk) ends the saving, with a warning, not the call.
    """

    NAME = re.compile(r"frame-(\d+)\.png")
    QUEUE = 4  # files waiting to be written before send() waits for the writer

    def __init__(self, folder: str, *, every: int = 15, limit: int = 300,
                 warn: Callable[[str], None] = lambda message: None):
        if every < 1 or limit < 1:
            raise ValueError(f"every and limit must be at least 1, not {every} and {limit}")
        self.folder = os.fspath(folder)
        self.every, self.limit, self._warn = every, limit, warn
        self.seen = 0  # frames sent
        self.chosen = 0  # frames handed to the writer
        self.saved = 0  # files written
        self._queue: "queue.Queue" = queue.Queue(maxsize=self.QUEUE)
        self._writer: Optional[threading.Thread] = None
        self._failed = threading.Event()

    def open(self) -> "FrameFolderSink":
        problem = check_frame_folder(self.folder)
        if problem:
            raise SinkError(problem)
        numbers = [int(m.group(1)) for m in map(self.NAME.fullmatch, os.listdir(self.folder)) if m]
        self._writer = threading.Thread(target=self._write_files, args=(max(numbers, default=0) + 1,),
                                        name="sharpcam-save-frames", daemon=True)
        self._writer.start()
        return self

    def send(self, frame: np.ndarray) -> None:
        index, self.seen = self.seen, self.seen + 1
        if index % self.every or self.chosen >= self.limit or self._failed.is_set():
            return
        self.chosen += 1
        self._queue.put(frame.copy())  # sources may hand out the same buffer again

    def _write_files(self, number: int) -> None:
        while True:
            frame = self._queue.get()
            if frame is None:
                return
            if self._failed.is_set():
                continue  # drain what was queued before the failure
            path = os.path.join(self.folder, f"frame-{number:05d}.png")
            try:
                self._write_png(path, frame)
            except Exception as exc:  # any failure here must end the saving, never the call
                self._failed.set()
                reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
                self._warn(f"--save-frames: cannot write {path} ({reason}); "
                           f"stopped saving after {self.saved} frames")
                continue
            self.saved += 1
            number += 1

    def _write_png(self, path: str, frame: np.ndarray) -> None:
        # Level 1 of 9: twice as fast as OpenCV's default 3, for 2 % larger files.
        ok, png = cv2.imencode(".png", frame, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        if not ok:
            raise ValueError(f"OpenCV cannot encode a {frame.shape} frame as PNG")
        write_atomically(path, png.tobytes())

    def describe(self) -> str:
        return (f"frame folder {self.folder}: 1 in {self.every} source frames as PNG, "
                f"at most {self.limit} files")

    def close(self) -> None:
        if self._writer is None:
            return
        self._queue.put(None)
        self._writer.join()
        self._writer = None
