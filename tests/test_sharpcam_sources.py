"""Sources: the demo is deterministic and moves; files loop; a webcam opens, reports what it
delivers and comes back after being lost; list_cameras finds the cameras that deliver frames."""
import threading

import cv2
import numpy as np
import pytest

from sharpcam.sources import CameraSource, DemoSource, SourceError, VideoFileSource


def test_demo_is_deterministic_per_seed_and_moves():
    with DemoSource(width=160, height=96, seed=1) as a, DemoSource(width=160, height=96, seed=1) as b:
        fa = [a.read() for _ in range(31)]
        fb = [b.read() for _ in range(31)]
    assert all(np.array_equal(x, y) for x, y in zip(fa, fb))
    assert fa[0].shape == (96, 160, 3) and fa[0].dtype == np.uint8
    assert np.abs(fa[0].astype(int) - fa[30]).mean() > 1  # one second later the view has moved
    with DemoSource(width=160, height=96, seed=2) as c:
        assert not np.array_equal(c.read(), fa[0])


def test_demo_is_degraded():
    demo = DemoSource(width=320, height=180, blur_sigma=0, jpeg_quality=100, noise_sigma=0, scale=1.0)
    with demo:
        clean = demo.read()
    with DemoSource(width=320, height=180) as degraded:
        soft = degraded.read()

    def detail(img):
        return cv2.Laplacian(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var()
    assert detail(soft) < detail(clean)


def test_file_source_ends_or_loops(tmp_path):
    path = tmp_path / "c.avi"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 24))
    for k in range(3):
        w.write(np.full((24, 32, 3), 40 * k, np.uint8))
    w.release()
    with VideoFileSource(str(path)) as once:
        assert (once.width, once.height, once.frame_count) == (32, 24, 3)
        count = 0
        while once.read() is not None:
            count += 1
        assert count == 3
    with VideoFileSource(str(path), loop=True) as looped:
        frames = [looped.read() for _ in range(7)]
    assert all(f is not None for f in frames)


def test_missing_camera_names_the_way_out():
    with pytest.raises(SourceError) as exc:
        CameraSource(97).open()
    assert "--list-cameras" in str(exc.value) and "--demo" in str(exc.value)


# -- the webcam, with OpenCV's VideoCapture replaced by a fake camera ---------------

class FakeCamera:
    """A webcam as a VideoCapture sees it: it opens while plugged in, delivers frames of
    ``size`` (each one a shade further, so frames can be told apart) until ``reads_left``
    runs out, then is unplugged; it is plugged back in after ``replug_after`` attempts to
    open it. ``fps`` is what it reports."""

    def __init__(self, size=(64, 48), fps=200.0, reads_left=None, replug_after=None):
        self.size, self.fps = size, fps
        self.reads_left, self.replug_after = reads_left, replug_after
        self.plugged, self.failed_opens, self.shade = True, 0, 0
        self.captures = []

    def frame(self):
        self.shade += 1
        return np.full((self.size[1], self.size[0], 3), self.shade % 256, np.uint8)


class FakeCapture:
    """Stands in for cv2.VideoCapture over a {device: FakeCamera} table."""

    def __init__(self, cameras, device, api=None):
        self.device, self.api = device, api
        self.camera = cameras.get(device)
        self.settings, self.released = {}, False
        self._open = self.camera is not None and self.camera.plugged
        if self.camera is not None:
            self.camera.captures.append(self)
            if not self._open:
                self.camera.failed_opens += 1
                if self.camera.replug_after and self.camera.failed_opens >= self.camera.replug_after:
                    self.camera.plugged, self.camera.reads_left = True, None  # for the next open

    def isOpened(self):
        return self._open

    def read(self):
        camera = self.camera
        if not self._open or self.released or not camera.plugged or camera.reads_left == 0:
            if camera is not None and camera.reads_left == 0:
                camera.plugged = False  # the cable came out
            return False, None
        if camera.reads_left is not None:
            camera.reads_left -= 1
        return True, camera.frame()

    def set(self, prop, value):
        self.settings[prop] = value
        return True

    def get(self, prop):
        if prop == cv2.CAP_PROP_FPS:
            return self.camera.fps
        if prop == cv2.CAP_PROP_FOURCC:
            return self.settings.get(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*"YUYV"))
        return 0.0

    def release(self):
        self.released = True


@pytest.fixture
def cameras(monkeypatch):
    """The cameras OpenCV finds, by device; starts with none."""
    table = {}
    monkeypatch.setattr(cv2, "VideoCapture", lambda device, api=None: FakeCapture(table, device, api))
    return table


def camera_api():
    from sharpcam.sources import _camera_api
    return _camera_api()


def test_camera_asks_for_mjpg_at_the_size_and_rate_requested(cameras):
    cameras[0] = FakeCamera(size=(640, 480), fps=30.0)
    with CameraSource("0", width=640, height=480, fps=30) as camera:
        (capture,) = cameras[0].captures
        assert capture.api == camera_api()
        assert capture.settings == {cv2.CAP_PROP_FOURCC: cv2.VideoWriter_fourcc(*"MJPG"),
                                    cv2.CAP_PROP_FRAME_WIDTH: 640, cv2.CAP_PROP_FRAME_HEIGHT: 480,
                                    cv2.CAP_PROP_FPS: 30.0, cv2.CAP_PROP_BUFFERSIZE: 1}
        assert camera.describe() == "camera 0: 640x480 at 30 fps (MJPG)"
        # The frame read while opening (to learn the size) is not lost: it comes first.
        assert [camera.read()[0, 0, 0] for _ in range(3)] == [1, 2, 3]
    assert capture.released


def test_camera_says_what_it_delivers_when_that_is_not_what_was_asked(cameras):
    cameras["/dev/video2"] = FakeCamera(size=(320, 240), fps=15.0)
    with CameraSource("/dev/video2", width=1280, height=720, fps=30, mjpg=False) as camera:
        assert (camera.width, camera.height, camera.fps) == (320, 240, 15.0)
        assert cv2.CAP_PROP_FOURCC not in cameras["/dev/video2"].captures[0].settings
        assert camera.describe() == ("camera /dev/video2: asked 1280x720 at 30 fps, camera delivers "
                                     "320x240 at 15 fps (YUYV)")


def test_camera_that_the_system_backend_cannot_open_is_opened_by_the_default_one(cameras):
    cameras[1] = FakeCamera()
    cameras[1].plugged, cameras[1].replug_after = False, 1  # refuses the first open only
    with CameraSource(1) as camera:
        assert camera.read() is not None
    assert [c.api for c in cameras[1].captures] == [camera_api(), None]


def test_camera_that_never_opens_says_what_to_do(cameras):
    with pytest.raises(SourceError, match="--list-cameras"):
        CameraSource(3).open()


def test_camera_lost_mid_call_is_reopened_and_the_call_goes_on(cameras):
    """The cable comes out after 4 frames and goes back in on the 3rd attempt to open it:
    the sinks get the 'camera lost' frame meanwhile, then fresh frames again."""
    from sharpcam.controls import ControlState, Controls
    from sharpcam.pipeline import Pipeline

    class Recording:
        def __init__(self):
            self.frames = []

        def send(self, frame):
            self.frames.append(frame.copy())

    class Bypass:
        model_ms = 0.0

        def process(self, frame, state):
            return frame

    cameras[0] = FakeCamera(reads_left=4, replug_after=3)
    sink = Recording()
    controls = Controls(ControlState(mode="off"))
    give_up = threading.Timer(20.0, controls.quit.set)  # a camera never reopened never ends the run
    give_up.start()
    try:
        with CameraSource(0) as camera:
            summary = Pipeline(camera, Bypass(), controls, [sink], max_frames=8,
                               reconnect_delays=(0.001,)).run_live()
    finally:
        give_up.cancel()
    first = cameras[0].captures[0]
    assert summary.reconnects == 1 and summary.frames == 8
    assert first.released  # the lost capture was let go before reopening
    # Fresh frames are flat; the 'camera lost' frames carry the note's text.
    flat = [frame.min() == frame.max() for frame in sink.frames]
    lost = flat.index(False)
    assert 1 <= lost and flat[lost:].count(True) >= 1, "no fresh frames after the camera came back"
    shades = [int(f[0, 0, 0]) for f, is_flat in zip(sink.frames, flat) if is_flat]
    assert shades == sorted(shades) and shades[-1] > 4  # the first camera gave shades 1 to 4


# -- list_cameras -------------------------------------------------------------------

@pytest.fixture
def linux_video_nodes(cameras, monkeypatch, tmp_path):
    """/dev/video0, 1, 2, 3 and 10 on Linux, with sysfs names under tmp_path: 0, 2 and 10
    are cameras, 1 is a metadata node (opens, delivers nothing), 3 does not open."""
    import sharpcam.sources as sources
    monkeypatch.setattr(sources.platform, "system", lambda: "Linux")
    monkeypatch.setattr(sources.glob, "glob", lambda pattern: [
        "/dev/video10", "/dev/video2", "/dev/video0", "/dev/video3", "/dev/video1", "/dev/video-meta"])
    monkeypatch.setattr(sources, "V4L2_SYSFS", str(tmp_path))
    (tmp_path / "video0").mkdir()
    (tmp_path / "video0" / "name").write_text("HD Webcam C270\n")
    cameras[0] = FakeCamera(size=(640, 480), fps=30.0)
    cameras[1] = FakeCamera(reads_left=0)
    cameras[2] = FakeCamera(size=(160, 120), fps=15.0)
    cameras[10] = FakeCamera(size=(1280, 720), fps=60.0)
    return cameras


def test_list_cameras_names_those_that_deliver_frames_in_device_order(linux_video_nodes):
    from sharpcam.sources import list_cameras
    assert list_cameras() == [(0, "640x480 at 30 fps HD Webcam C270"), (2, "160x120 at 15 fps"),
                              (10, "1280x720 at 60 fps")]
    assert all(c.released for camera in linux_video_nodes.values() for c in camera.captures)


def test_list_cameras_elsewhere_tries_the_first_indices(cameras, monkeypatch):
    import sharpcam.sources as sources
    monkeypatch.setattr(sources.platform, "system", lambda: "Windows")
    cameras[1] = FakeCamera(size=(320, 240), fps=25.0)
    cameras[7] = FakeCamera()  # beyond max_index: not tried
    assert sources.list_cameras(max_index=3) == [(1, "320x240 at 25 fps")]
    assert cameras[7].captures == []


def test_sharpcam_list_cameras_prints_them_or_says_there_are_none(linux_video_nodes, capsys):
    from sharpcam.cli import main
    assert main(["--list-cameras"]) == 0
    assert capsys.readouterr().out.splitlines() == ["0: 640x480 at 30 fps HD Webcam C270",
                                                    "2: 160x120 at 15 fps", "10: 1280x720 at 60 fps"]
    linux_video_nodes.clear()
    assert main(["--list-cameras"]) == 1
    assert "no cameras found" in capsys.readouterr().out
