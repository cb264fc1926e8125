"""Fixtures for the sharpcam tests: small student-like ONNX models built with onnx.helper."""
from __future__ import annotations

import contextlib
import json
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import termios
import time

import numpy as np
import pytest


def build_test_model(path, *, receptive_radius=12, size_multiple=4, metadata=True, seed=0,
                     channels=8, reads_whole_frame=None):
    """Write a tiny residual encoder/decoder to ``path``.

    Two stride-2 convolutions, a ConvTranspose and a nearest Resize make the
    output depend on where a window starts (alignment to 4 pixels matters),
    and its receptive radius is about 11 pixels, declared as 12.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def weight(name, shape):
        fan_in = int(np.prod(shape[1:]))
        w = rng.normal(0, np.sqrt(2.0 / fan_in), shape).astype(np.float32)
        inits.append(numpy_helper.from_array(w, name))
        return name

    def conv(x, out, cin, cout, stride=1, relu=True):
        w = weight(out + "_w", (cout, cin, 3, 3))
        b = out + "_b"
        inits.append(numpy_helper.from_array(rng.normal(0, 0.05, cout).astype(np.float32), b))
        y = out + "_pre" if relu else out
        nodes.append(helper.make_node("Conv", [x, w, b], [y], kernel_shape=[3, 3],
                                      pads=[1, 1, 1, 1], strides=[stride, stride]))
        if relu:
            nodes.append(helper.make_node("Relu", [y], [out]))
        return out

    c = channels
    h = conv("image", "c1", 3, c)
    h = conv(h, "d1", c, c, stride=2)
    h = conv(h, "d2", c, c, stride=2)
    h = conv(h, "c2", c, c)
    wt = weight("u1_w", (c, c, 2, 2))
    nodes.append(helper.make_node("ConvTranspose", ["c2", wt], ["u1_pre"], strides=[2, 2],
                                  kernel_shape=[2, 2]))
    nodes.append(helper.make_node("Relu", ["u1_pre"], ["u1"]))
    inits.append(numpy_helper.from_array(np.array([], np.float32), "roi"))
    inits.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"))
    nodes.append(helper.make_node("Resize", ["u1", "roi", "scales"], ["u2"], mode="nearest"))
    h = conv("u2", "c3", c, 3, relu=False)
    inits.append(numpy_helper.from_array(np.array(0.2, np.float32), "gain"))
    nodes.append(helper.make_node("Mul", [h, "gain"], ["residual"]))
    nodes.append(helper.make_node("Add", ["image", "residual"], ["sharpened"]))

    dims = ["N", 3, "H", "W"]
    graph = helper.make_graph(
        nodes, "sharpcam_test_student",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("sharpened", TensorProto.FLOAT, dims)],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if metadata:
        props = {
            "sharpcam.arch": "test_unet",
            "sharpcam.preset": "test",
            "sharpcam.config": json.dumps({"channels": c}),
            "sharpcam.training": json.dumps({"note": "random weights, tests only"}),
            "sharpcam.receptive_radius": str(receptive_radius),
            "sharpcam.size_multiple": str(size_multiple),
        }
        if reads_whole_frame is not None:  # what the metadata says, not what the graph does
            props["sharpcam.reads_whole_frame"] = str(reads_whole_frame)
        helper.set_model_props(model, props)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def build_mapping_model(path, make_nodes, *, out_dims=("N", 3, "H", "W"), receptive_radius=0,
                        size_multiple=2):
    """Write a model whose graph ``make_nodes(helper, numpy_helper)`` builds from 'image' to
    'sharpened' (returning (nodes, initializers)), with SharpCam metadata, so it passes the
    start-up checks whatever it computes: how tests make models that break the contract at run time."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = make_nodes(helper, numpy_helper)
    graph = helper.make_graph(
        nodes, "sharpcam_mapping_model",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("sharpened", TensorProto.FLOAT, list(out_dims))],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"sharpcam.receptive_radius": str(receptive_radius),
                                   "sharpcam.size_multiple": str(size_multiple)})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def half_size_model(path):
    """Output at half the input's height and width."""
    return build_mapping_model(path, lambda helper, nh: ([helper.make_node(
        "AveragePool", ["image"], ["sharpened"], kernel_shape=[2, 2], strides=[2, 2])], []),
        out_dims=("N", 3, "h", "w"))


def one_channel_model(path):
    """Output with one channel instead of three."""
    return build_mapping_model(path, lambda helper, nh: ([helper.make_node(
        "ReduceMean", ["image"], ["sharpened"], axes=[1], keepdims=1)], []),
        out_dims=("N", 1, "H", "W"))


def nan_model(path):
    """Output NaN everywhere (as a model with broken weights does)."""
    return build_mapping_model(path, lambda helper, nh: (
        [helper.make_node("Mul", ["image", "nan"], ["sharpened"])],
        [nh.from_array(np.array(np.nan, np.float32), "nan")]))


def sharpcam_stopped_by_sigterm(args, marker: str, env=None):
    """Run ``python -m sharpcam ARGS``, wait until ``marker`` shows on its stderr (frames are
    flowing), send SIGTERM as a service manager's stop does; returns (exit code, stdout,
    everything on stderr)."""
    proc = subprocess.Popen([sys.executable, "-m", "sharpcam", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline, seen = time.monotonic() + 120, ""
        while marker not in seen:
            assert time.monotonic() < deadline and proc.poll() is None, seen
            if select.select([proc.stderr], [], [], 0.5)[0]:
                seen += proc.stderr.readline()
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, stdout, seen + stderr


def write_clip(path, frames=12, size=(160, 96), fps=15):
    """A clip of random frames; .avi files are written by OpenCV's own MJPEG encoder, which
    keeps any frame size (FFmpeg's rounds odd sizes down to even), others as mp4v."""
    import cv2
    avi = str(path).lower().endswith(".avi")
    writer = cv2.VideoWriter(str(path), cv2.CAP_OPENCV_MJPEG if avi else cv2.CAP_ANY,
                             cv2.VideoWriter_fourcc(*("MJPG" if avi else "mp4v")), fps, size)
    assert writer.isOpened()
    rng = np.random.default_rng(0)
    for _ in range(frames):
        writer.write(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    writer.release()
    return path


def video_facts(path):
    """(frame count, shape of the last frame) as a player decodes them."""
    import cv2
    cap = cv2.VideoCapture(str(path))
    count, shape = 0, None
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        count, shape = count + 1, frame.shape
    cap.release()
    return count, shape


@pytest.fixture(scope="session")
def test_model(tmp_path_factory):
    return build_test_model(tmp_path_factory.mktemp("models") / "student_test.onnx")


@pytest.fixture(scope="session")
def engine(test_model):
    from sharpcam.engine import Engine
    with Engine(test_model, device="cpu", threads=2) as eng:
        yield eng


def _free_display_number():
    for n in range(90, 200):
        if not os.path.exists(f"/tmp/.X{n}-lock") and not os.path.exists(f"/tmp/.X11-unix/X{n}"):
            return n
    raise RuntimeError("no free X display number between :90 and :199")


REQUIRE_X = "SHARPCAM_REQUIRE_XVFB"


def missing_x_part(what: str):
    """Skip an X test on a machine without the X parts, saying how to run it; where CI
    sets SHARPCAM_REQUIRE_XVFB=1 (it installs them), fail instead, so the tests cannot
    silently stop running there."""
    reason = (f"{what}: the preview tests need a virtual X display; install it "
              "(apt-get install xvfb libxtst6 libx11-6 fonts-dejavu-core) and run them again")
    if os.environ.get(REQUIRE_X) == "1":
        pytest.fail(f"{reason} ({REQUIRE_X}=1: these tests must run here)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def xvfb_server():
    """A private Xvfb server for the session, torn down after; yields its display name."""
    binary = shutil.which("Xvfb")
    if not binary:
        missing_x_part("Xvfb is not installed")
    number = _free_display_number()
    display = f":{number}"
    proc = subprocess.Popen([binary, display, "-screen", "0", "1024x768x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    socket = f"/tmp/.X11-unix/X{number}"
    deadline = time.monotonic() + 20
    while not os.path.exists(socket):  # readiness, not a timing assumption
        assert proc.poll() is None, f"Xvfb {display} exited with {proc.returncode}"
        assert time.monotonic() < deadline, f"Xvfb {display} did not create {socket}"
        time.sleep(0.05)
    try:
        yield display
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def xvfb_display(xvfb_server, monkeypatch):
    """DISPLAY points at the private Xvfb for one test only."""
    monkeypatch.setenv("DISPLAY", xvfb_server)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    return xvfb_server


class XKeyboard:
    """Injects real key events into an X server through the XTEST extension."""

    def __init__(self, display):
        import ctypes
        try:
            self._x = ctypes.cdll.LoadLibrary("libX11.so.6")
            self._xt = ctypes.cdll.LoadLibrary("libXtst.so.6")
        except OSError as exc:
            missing_x_part(f"libX11/libXtst cannot be loaded ({exc})")
        self._x.XOpenDisplay.restype = ctypes.c_void_p
        self._x.XOpenDisplay.argtypes = [ctypes.c_char_p]
        self._x.XStringToKeysym.restype = ctypes.c_ulong
        self._x.XStringToKeysym.argtypes = [ctypes.c_char_p]
        self._x.XKeysymToKeycode.argtypes = [ctypes.c_void_p, ctypes.c_ulong]
        self._x.XKeysymToKeycode.restype = ctypes.c_ubyte
        self._x.XFlush.argtypes = [ctypes.c_void_p]
        self._x.XCloseDisplay.argtypes = [ctypes.c_void_p]
        self._xt.XTestFakeKeyEvent.argtypes = [ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_ulong]
        self._xt.XTestFakeMotionEvent.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                                                  ctypes.c_int, ctypes.c_ulong]
        self._d = self._x.XOpenDisplay(display.encode())
        assert self._d, f"cannot open X display {display}"

    def point_at(self, x, y):
        # Without a window manager, keyboard focus follows the pointer.
        self._xt.XTestFakeMotionEvent(self._d, -1, x, y, 0)
        self._x.XFlush(self._d)

    def tap(self, keysym: str):
        code = self._x.XKeysymToKeycode(self._d, self._x.XStringToKeysym(keysym.encode()))
        self._xt.XTestFakeKeyEvent(self._d, code, 1, 0)
        self._xt.XTestFakeKeyEvent(self._d, code, 0, 0)
        self._x.XFlush(self._d)

    def close(self):
        self._x.XCloseDisplay(self._d)


@pytest.fixture
def x_keyboard(xvfb_display):
    kb = XKeyboard(xvfb_display)
    yield kb
    kb.close()


class RecordingBackend:
    """A pyvirtualcam backend (its documented duck type) that keeps what it is sent."""
    instances = []

    def __init__(self, *, width, height, fps, fourcc, device, **kw):
        self.width, self.height, self.fps, self.fourcc = width, height, fps, fourcc
        self._device = device or "recorder0"
        self.frames = []
        self.closed = False
        RecordingBackend.instances.append(self)

    def send(self, frame):
        self.frames.append(frame.copy())

    def device(self):
        return self._device

    def native_fourcc(self):
        return self.fourcc

    def close(self):
        self.closed = True


@pytest.fixture
def only_recorder(monkeypatch):
    """Replace every installed backend with the recorder (so no real device is touched)."""
    import pyvirtualcam
    from pyvirtualcam import camera as pvc_camera
    monkeypatch.setattr(pvc_camera, "BACKENDS", {})
    pyvirtualcam.register_backend("recorder", RecordingBackend)
    RecordingBackend.instances = []
    return RecordingBackend


class FakeClock:
    """A clock that stands still until a test moves ``t``: timing logic without timing."""

    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class PtyTranscript:
    """What a process has written to its pseudo-terminal so far (``seen``), read from
    ``master``; ``until`` waits for a text, failing with the transcript if the process
    ends first or the text does not come in time."""

    def __init__(self, master: int, proc):
        self.master, self.proc, self.seen = master, proc, b""

    def until(self, needle: bytes, limit: float = 120.0) -> None:
        end = time.monotonic() + limit
        while needle not in self.seen:
            assert time.monotonic() < end and self.proc.poll() is None, self.seen.decode(errors="replace")
            if select.select([self.master], [], [], 0.5)[0]:
                self.seen += os.read(self.master, 4096)

    def drain(self) -> None:
        """Everything still buffered, once the process has ended."""
        while select.select([self.master], [], [], 0.2)[0]:
            try:
                self.seen += os.read(self.master, 4096)
            except OSError:  # the other side is closed and nothing is left
                break


@contextlib.contextmanager
def sharpcam_on_a_terminal(args, env=None):
    """``python -m sharpcam ARGS`` with a pseudo-terminal as stdin, stdout and stderr, as a
    user starts it; yields its ``PtyTranscript`` (``before``: the terminal's settings from
    before the start) and always ends the process and closes the terminal."""
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    proc = subprocess.Popen([sys.executable, "-m", "sharpcam", *map(str, args)],
                            stdin=slave, stdout=slave, stderr=slave, env=env)
    transcript = PtyTranscript(master, proc)
    transcript.slave, transcript.before = slave, before
    try:
        yield transcript
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
        os.close(slave)
