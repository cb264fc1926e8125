"""The virtual-camera sink through pyvirtualcam's real Camera with an in-process backend."""
import numpy as np
import pytest
import pyvirtualcam
from pyvirtualcam import camera as pvc_camera

from conftest import RecordingBackend
from sharpcam.cli import main
from sharpcam.sinks import VirtualCameraSink, VirtualCameraUnavailable, virtual_camera_guidance


@pytest.fixture
def no_backend(monkeypatch):
    def refuse(**kw):
        raise RuntimeError("device not found")
    monkeypatch.setattr(pvc_camera, "BACKENDS", {})
    pyvirtualcam.register_backend("v4l2loopback", refuse)


def test_sink_sends_bgr_frames_through_pyvirtualcam(only_recorder):
    frame = np.zeros((6, 8, 3), np.uint8)
    frame[..., 0] = 200  # blue, in BGR
    with VirtualCameraSink(8, 6, 30.0) as sink:
        sink.send(frame)
        assert "recorder" in sink.describe()
    backend = only_recorder.instances[0]
    assert backend.closed
    assert backend.fourcc == pyvirtualcam.util.encode_fourcc(pyvirtualcam.PixelFormat.BGR.value)
    assert len(backend.frames) == 1 and backend.frames[0].size == 6 * 8 * 3
    assert backend.frames[0].reshape(6, 8, 3)[0, 0].tolist() == [200, 0, 0]


def test_live_demo_to_virtual_camera(only_recorder, capsys, test_model):
    rc = main(["--demo", "--model", str(test_model), "--width", "160", "--height", "96",
               "--fps", "25", "--max-frames", "5"])
    assert rc == 0
    backend = only_recorder.instances[0]
    assert backend.closed  # released on exit
    assert (backend.width, backend.height, backend.fps) == (160, 96, 25.0)  # fps matched to source
    assert len(backend.frames) == 5
    err = capsys.readouterr().err
    assert "pick it as the camera" in err and "stopped: frames=5" in err
    status = [line for line in err.splitlines() if line.startswith("in 160x96")]
    assert status, err
    for field in ("fps | out", "model", "ms | dropped", "mode=on strength=1.0"):
        assert field in status[-1]


def test_no_backend_prints_guidance(no_backend, capsys, test_model):
    rc = main(["--demo", "--model", str(test_model), "--width", "160", "--height", "96"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert "sudo modprobe v4l2loopback devices=1 exclusive_caps=1 card_label=SharpCam" in err
    assert "--preview" in err


def test_no_backend_continues_with_other_sinks(no_backend, tmp_path, capsys, test_model):
    out = tmp_path / "o.avi"
    rc = main(["--demo", "--vcam", "--output", str(out), "--model", str(test_model),
               "--width", "160", "--height", "96", "--max-frames", "3"])
    assert rc == 0 and out.exists()
    assert "continuing with --output" in capsys.readouterr().err


def test_no_backend_raises_typed_error(no_backend):
    with pytest.raises(VirtualCameraUnavailable, match="modprobe"):
        VirtualCameraSink(8, 6, 30.0).open()


@pytest.mark.parametrize("system", ["Windows", "Darwin"])
def test_guidance_for_windows_and_macos(system):
    text = virtual_camera_guidance(system)
    assert "OBS" in text and "Start Virtual Camera" in text and "--preview" in text


def test_ctrl_c_releases_virtual_camera_and_keeps_recording(only_recorder, tmp_path, capsys, test_model):
    class InterruptingBackend(RecordingBackend):
        def send(self, frame):
            super().send(frame)
            if len(self.frames) == 3:
                raise KeyboardInterrupt  # what Ctrl-C raises in the main thread

    pyvirtualcam.register_backend("recorder", InterruptingBackend)
    out = tmp_path / "kept.avi"
    rc = main(["--demo", "--vcam", "--model", str(test_model), "--width", "160", "--height", "96",
               "--output", str(out)])
    assert rc == 130
    backend = only_recorder.instances[0]
    assert backend.closed and len(backend.frames) == 3
    assert out.exists() and not list(tmp_path.glob(".*partial*"))
    err = capsys.readouterr().err
    assert "virtual camera released" in err
    assert "stopped: frames=2" in err  # the summary on Ctrl-C too; the file got 2 before the third raised
