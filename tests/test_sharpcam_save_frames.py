"""`sharpcam --save-frames DIR`: every Nth source frame as a PNG, capped, written atomically,
and only real camera frames, also when the camera is lost for a while."""
import threading

import cv2
import numpy as np
import pytest

from sharpcam.cli import main
from sharpcam.controls import ControlState, Controls
from sharpcam.pipeline import Pipeline
from sharpcam.sinks import FrameFolderSink
from sharpcam.sources import DemoSource


def pngs(folder):
    """{name: frame} of the PNG files in ``folder``; fails on any other file (a temporary
    one left behind) and on a file cv2 cannot read."""
    files = sorted(p.name for p in folder.iterdir())
    assert all(name.startswith("frame-") and name.endswith(".png") for name in files), files
    frames = {name: cv2.imread(str(folder / name), cv2.IMREAD_UNCHANGED) for name in files}
    assert all(frame is not None for frame in frames.values()), files
    return frames


def demo_frames(count, width=64, height=48):
    with DemoSource(width=width, height=height) as demo:
        return [demo.read() for _ in range(count)]


def run_demo(folder, out, *options):
    return main(["--demo", "--width", "64", "--height", "48", "--output", str(out), "--max-frames", "10",
                 "--mirror", "--save-frames", str(folder), *map(str, options)])


def test_every_nth_source_frame_is_saved_as_it_came(tmp_path, capsys, test_model):
    folder = tmp_path / "frames"  # made by sharpcam
    assert run_demo(folder, tmp_path / "out.avi", "--save-every", 3, "--model", test_model) == 0
    saved, source = pngs(folder), demo_frames(10)
    # Frames 0, 3, 6 and 9 of the demo, neither mirrored nor sharpened: what the camera gave.
    assert sorted(saved) == [f"frame-{n:05d}.png" for n in range(1, 5)]
    for name, k in zip(sorted(saved), range(0, 10, 3)):
        assert np.array_equal(saved[name], source[k]), name
    assert f"--save-frames: 4 frames saved in {folder}" in capsys.readouterr().err


def test_saving_stops_at_the_cap_and_a_second_run_adds_files(tmp_path, test_model):
    folder = tmp_path / "frames"
    assert run_demo(folder, tmp_path / "a.avi", "--save-every", 1, "--save-max", 2,
                    "--model", test_model) == 0
    assert sorted(pngs(folder)) == ["frame-00001.png", "frame-00002.png"]
    first = pngs(folder)
    assert run_demo(folder, tmp_path / "b.avi", "--save-every", 5, "--model", test_model) == 0
    saved = pngs(folder)
    assert sorted(saved) == [f"frame-{n:05d}.png" for n in range(1, 5)]  # 2 more: frames 0 and 5
    assert all(np.array_equal(saved[name], first[name]) for name in first)  # nothing overwritten


class VanishingCamera:
    """Frame k is flat grey with k in its first 4 bytes; after ``lost_after`` frames the camera
    is gone (read gives None) until ``back`` is set, as a USB camera pulled out and put back."""
    self_paced, finite, frame_count, fps, height, width = True, False, 0, 200.0, 24, 32

    def __init__(self, lost_after):
        self.lost_after, self.produced, self.back = lost_after, 0, threading.Event()

    def read(self):
        if self.produced >= self.lost_after and not self.back.is_set():
            return None
        frame = np.full((self.height, self.width, 3), 7, np.uint8)
        frame.reshape(-1)[:4] = np.array([self.produced], "<u4").view(np.uint8)
        self.produced += 1
        return frame

    def reopen(self):
        return self.back.is_set()


class LostNoteWatcher:
    """A sink that sets ``camera.back`` once it has been sent three 'camera lost' frames."""

    def __init__(self, camera):
        self.camera, self.lost_frames = camera, 0

    def send(self, frame):
        if frame.min() != frame.max() and frame[-12:, :24].min() != frame[-12:, :24].max():
            self.lost_frames += 1  # the note's text, bottom left
            if self.lost_frames == 3:
                self.camera.back.set()


class Bypass:
    model_ms = 0.0

    def process(self, frame, state):
        return frame


def test_a_lost_camera_goes_on_and_only_real_frames_are_saved(tmp_path):
    camera = VanishingCamera(lost_after=3)
    watcher = LostNoteWatcher(camera)
    controls = Controls(ControlState(mode="off"))
    give_up = threading.Timer(20.0, controls.quit.set)  # a camera that never comes back
    give_up.start()
    try:
        with FrameFolderSink(tmp_path / "frames", every=1, limit=100) as frames:
            summary = Pipeline(camera, Bypass(), controls, [watcher], max_frames=6,
                               reconnect_delays=(0.001,), input_sinks=[frames]).run_live()
    finally:
        give_up.cancel()
    assert watcher.lost_frames >= 3 and summary.reconnects == 1 and summary.frames == 6
    saved = [frame for _, frame in sorted(pngs(tmp_path / "frames").items())]
    assert len(saved) == summary.frames == frames.saved
    indices = [int(f.reshape(-1)[:4].view("<u4")[0]) for f in saved]
    assert indices == sorted(set(indices)) and indices[-1] >= 3  # frames from after the reconnect too
    assert all(np.all(f.reshape(-1)[4:] == 7) for f in saved)  # no 'camera lost' note in any


def test_a_full_disk_ends_the_saving_not_the_call(tmp_path, monkeypatch):
    real_write, writes = FrameFolderSink._write_png, []

    def write(self, path, frame):
        writes.append(path)
        if len(writes) > 2:
            raise OSError(28, "No space left on device")
        real_write(self, path, frame)

    monkeypatch.setattr(FrameFolderSink, "_write_png", write)
    warnings = []
    frames = FrameFolderSink(tmp_path, every=1, limit=50, warn=warnings.append)

    def call():
        with frames:
            for _ in range(20):  # more than its queue holds: send must not wait on a writer that gave up
                frames.send(np.zeros((24, 32, 3), np.uint8))

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    caller.join(timeout=20)
    assert not caller.is_alive(), "send() waits for ever on a writer that stopped"
    assert frames.saved == 2 and len(pngs(tmp_path)) == 2
    assert len(warnings) == 1 and "No space left on device" in warnings[0] and "after 2 frames" in warnings[0]


@pytest.mark.parametrize("args,needle", [
    (["--save-every", "3"], "--save-every only applies with --save-frames DIR"),
    (["--save-max", "3"], "--save-max only applies with --save-frames DIR"),
    (["--save-frames", "{file}"], "is a file; give a folder"),
])
def test_save_options_that_cannot_work_are_one_clear_line(args, needle, tmp_path, capsys, test_model):
    (tmp_path / "notes.txt").write_text("not a folder")
    args = [a.format(file=tmp_path / "notes.txt") for a in args]
    assert main(["--demo", "--output", str(tmp_path / "o.avi"), "--model", str(test_model), *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("sharpcam: error:") and needle in err[-1], err
    assert not (tmp_path / "o.avi").exists()


def test_each_file_is_written_under_a_temporary_name_then_renamed(tmp_path, monkeypatch):
    import os
    renames = []
    real_replace = os.replace

    def replace(src, dst):
        assert not os.path.exists(dst)  # the final name appears only with the whole file
        renames.append((os.path.dirname(src), os.path.basename(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with FrameFolderSink(tmp_path, every=2, limit=10) as frames:
        for _ in range(5):
            frames.send(np.zeros((24, 32, 3), np.uint8))
    assert renames == [(str(tmp_path), f"frame-{n:05d}.png") for n in (1, 2, 3)]
    assert len(pngs(tmp_path)) == 3
    umask = os.umask(0)
    os.umask(umask)
    # As a plain open would make them (a temporary file's 0600 would hide them from others).
    assert {p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == {0o666 & ~umask}
