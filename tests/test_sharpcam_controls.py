"""Strength and mode arithmetic, and hotkeys delivered as injected key events."""
import os
import pty
import termios

import numpy as np
import pytest

from conftest import sharpcam_on_a_terminal, video_facts, write_clip
from sharpcam.controls import ControlState, Controls, TerminalKeys, apply_key
from sharpcam.sharpen import Sharpener, draw_split, to_uint8_bgr


def test_hotkeys_change_state():
    s = ControlState()
    s = apply_key(s, " ")
    assert s.mode == "off"
    s = apply_key(s, " ")
    assert s.mode == "on"
    s = apply_key(s, "s")
    assert s.mode == "split"
    assert apply_key(s, " ").mode == "off"
    assert apply_key(s, "s").mode == "on"
    assert apply_key(s, "m").mirror is True
    assert apply_key(s, "x") == s


def test_strength_steps_and_clamps():
    s = ControlState(strength=1.95)
    assert apply_key(s, "+").strength == 2.0
    assert apply_key(apply_key(s, "+"), "+").strength == 2.0
    s = ControlState(strength=0.05)
    assert apply_key(s, "-").strength == 0.0
    assert apply_key(ControlState(), "+").strength == pytest.approx(1.1)
    with pytest.raises(ValueError):
        ControlState(strength=2.5)


def test_keys_take_effect_on_next_frame_and_quit_is_immediate():
    c = Controls()
    c.press(" ")
    assert c.state.mode == "on"  # not applied mid-frame
    assert c.next_frame().mode == "off"
    c.press("+")
    c.press("+")
    assert c.next_frame().strength == pytest.approx(1.2)
    assert not c.quit.is_set()
    c.press("q")
    assert c.quit.is_set()


def test_strength_arithmetic():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    model_rgb = rng.random((3, 20, 30), dtype=np.float32) * 1.2 - 0.1  # slightly outside [0,1]
    model_bgr = model_rgb[::-1].transpose(1, 2, 0) * 255
    for s in (0.0, 0.5, 1.0, 1.7, 2.0):
        got = to_uint8_bgr(model_rgb, frame, s).astype(np.float64)
        want = np.clip(frame + s * (model_bgr - frame), 0, 255)
        assert np.abs(got - want).max() <= 0.5 + 1e-3, s


def test_split_view_halves_and_divider():
    orig = np.full((10, 20, 3), 10, np.uint8)
    proc = np.full((10, 20, 3), 200, np.uint8)
    out = draw_split(orig, proc)
    assert np.all(out[:, :9] == 10)
    assert np.all(out[:, 9:11] == 255)
    assert np.all(out[:, 11:] == 200)


class ConstantEngine:
    """Stands in for an engine: the 'model' returns mid-grey everywhere."""
    receptive_radius, size_multiple, last_ms, reads_whole_frame = 0, 1, 1.0, False

    def run(self, batch):
        return np.full_like(batch, 0.5)


def test_sharpener_modes():
    sharpener = Sharpener(ConstantEngine(), tile=0)
    frame = np.zeros((4, 6, 3), np.uint8)
    frame[:, :3] = 20
    assert sharpener.process(frame, ControlState(mode="off")) is frame
    assert np.all(sharpener.process(frame, ControlState()) == 128)
    assert np.all(sharpener.process(frame, ControlState(strength=0.0)) == frame)
    half = sharpener.process(frame, ControlState(strength=0.5))
    assert half[0, 0, 0] == 74 and half[0, 5, 0] == 64
    mirrored = sharpener.process(frame, ControlState(mode="off", mirror=True))
    assert np.all(mirrored[:, 3:] == 20) and np.all(mirrored[:, :3] == 0)
    split = sharpener.process(frame, ControlState(mode="split"))
    assert np.all(split[:, 0] == 20) and np.all(split[:, 5] == 128)


def test_terminal_keys_read_a_real_tty():
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    try:
        c = Controls()
        with TerminalKeys(c, stream=slave) as keys:
            assert keys.active
            os.write(master, b" m")
            os.write(master, b"q")
            assert c.quit.wait(5)
        assert c.next_frame() == ControlState(mode="off", mirror=True)
        assert termios.tcgetattr(slave) == before, "terminal settings not restored"
    finally:
        os.close(master)
        os.close(slave)


def test_terminal_keys_leave_non_tty_alone(tmp_path):
    with open(tmp_path / "stdin.txt", "w+") as f:
        with TerminalKeys(Controls(), stream=f) as keys:
            assert not keys.active


class NanEngine(ConstantEngine):
    def run(self, batch):
        out = np.full_like(batch, 0.5)
        out[0, 1, 0, 0] = np.nan  # one bad value is enough to distrust the whole output
        return out


def test_non_finite_output_passes_the_frame_through_and_warns_once():
    warnings = []
    sharpener = Sharpener(NanEngine(), tile=0, warn=warnings.append)
    rng = np.random.default_rng(0)
    for _ in range(3):
        frame = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
        assert np.array_equal(sharpener.process(frame, ControlState()), frame)
    assert len(warnings) == 1 and "not finite" in warnings[0]
    assert sharpener.passed_through == 3


def test_keys_work_in_file_mode_and_are_not_echoed(tmp_path, test_model):
    """`sharpcam --input clip --output out` in a terminal: q ends the file cleanly."""
    clip = write_clip(tmp_path / "clip.avi", frames=6)
    out = tmp_path / "out.avi"
    with sharpcam_on_a_terminal(["--input", clip, "--loop", "--output", out, "--model", test_model]) as terminal:
        terminal.until(b" frames ")
        mark = len(terminal.seen)
        os.write(terminal.master, b"z")  # no such key: ignored, and not echoed onto the progress bar
        terminal.until(b" fps", limit=30)
        os.write(terminal.master, b"q")
        assert terminal.proc.wait(timeout=60) == 0, terminal.seen.decode(errors="replace")
        terminal.drain()
        seen = terminal.seen
        assert b"z" not in seen[mark:], seen[mark:]
        assert b"keys: space on/off" in seen
        assert termios.tcgetattr(terminal.slave) == terminal.before
        assert video_facts(out)[0] >= 1


class CountingEngine(ConstantEngine):
    def __init__(self):
        self.runs = 0

    def run(self, batch):
        self.runs += 1
        return np.clip(batch * 1.5, 0, 1)


def test_identical_frames_cost_one_inference():
    engine = CountingEngine()
    sharpener = Sharpener(engine, tile=0)
    still = np.random.default_rng(0).integers(0, 256, (8, 12, 3), dtype=np.uint8)
    first = sharpener.process(still.copy(), ControlState())
    for _ in range(9):  # a paused source: new arrays, same pixels
        again = sharpener.process(still.copy(), ControlState())
        assert np.array_equal(again, first)
    assert engine.runs == 1
    # Strength is applied to the kept model output: still no inference, but a new blend.
    half = sharpener.process(still.copy(), ControlState(strength=0.5))
    assert engine.runs == 1 and not np.array_equal(half, first)
    moved = still.copy()
    moved[0, 0, 0] ^= 1  # one level of one pixel is a new frame
    sharpener.process(moved, ControlState())
    assert engine.runs == 2
    sharpener.process(moved.copy(), ControlState(mirror=True))  # the model sees the mirrored frame
    assert engine.runs == 3


def test_a_paused_live_source_runs_the_model_once():
    from sharpcam.pipeline import Pipeline

    class PausedCamera:
        self_paced, finite, fps, height, width = True, False, 200.0, 8, 12

        def read(self):
            return np.full((8, 12, 3), 90, np.uint8)

    engine = CountingEngine()
    summary = Pipeline(PausedCamera(), Sharpener(engine, tile=0), Controls(), [], max_frames=6).run_live()
    assert summary.frames == 6 and engine.runs == 1
