"""The pipeline end to end: file mode through the CLI, live mode with fake sources."""
import io
import os
import re
import signal
import threading
import time

import cv2
import numpy as np
import pytest

from conftest import FakeClock, sharpcam_stopped_by_sigterm, video_facts, write_clip
from sharpcam.cli import main
from sharpcam.controls import ControlState, Controls
from sharpcam.pipeline import FrameSlot, Pipeline, Progress, StatusLine
from sharpcam.sharpen import Sharpener
from sharpcam.sinks import VideoFileSink


def test_file_mode_keeps_every_frame_and_prints_summary(tmp_path, capsys, test_model):
    clip = write_clip(tmp_path / "clip.avi", frames=12)
    out = tmp_path / "out.mp4"
    assert main(["--input", str(clip), "--output", str(out), "--model", str(test_model)]) == 0
    stdout = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"frames=12 fps=\d+\.\d model_ms=\d+\.\d cpu=\d+\.\d\d", stdout[-1])
    assert video_facts(out) == (12, (96, 160, 3))
    assert not list(tmp_path.glob(".*partial*"))


def test_demo_to_file_with_max_frames(tmp_path, capsys, test_model):
    out = tmp_path / "demo.avi"
    rc = main(["--demo", "--output", str(out), "--max-frames", "5", "--width", "192", "--height",
               "108", "--model", str(test_model), "--tile", "64"])
    assert rc == 0
    assert capsys.readouterr().out.startswith("frames=5 ")
    assert video_facts(out) == (5, (108, 192, 3))


def test_output_is_sharpened_not_copied(tmp_path, test_model):
    clip = write_clip(tmp_path / "clip.avi", frames=3)
    on, off = tmp_path / "on.avi", tmp_path / "off.avi"
    base = ["--input", str(clip), "--model", str(test_model)]
    assert main(base + ["--output", str(on)]) == 0
    assert main(base + ["--output", str(off), "--mode", "off"]) == 0
    a, b = cv2.VideoCapture(str(on)).read()[1], cv2.VideoCapture(str(off)).read()[1]
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 2


def test_unwritable_output_fails_before_capture(tmp_path, capsys, test_model):
    # Camera 97 does not exist: the error must be about the output, found first.
    rc = main(["--camera", "97", "--output", str(tmp_path / "no" / "such" / "out.mp4"),
               "--model", str(test_model)])
    err = capsys.readouterr().err
    assert rc == 1 and "does not exist" in err and "camera" not in err and "Traceback" not in err


@pytest.mark.parametrize("args,needle", [
    (["--model", "/nonexistent/student.onnx", "--demo"], "model file not found"),
    (["--camera", "97", "--no-vcam", "--output", "x.mp4"], "--list-cameras"),
    (["--input", "/nonexistent.mp4", "--output", "x.mp4"], "input file not found"),
    (["--demo", "--output", "x.txt"], "unknown video type"),
])
def test_setup_errors_are_one_clear_line(args, needle, tmp_path, monkeypatch, capsys, test_model):
    monkeypatch.chdir(tmp_path)
    if "--model" not in args:
        args = args + ["--model", str(test_model)]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("sharpcam: error:") and needle in err[-1]
    assert not (tmp_path / "x.mp4").exists()


def test_bad_strength_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--strength", "3"])
    assert exc.value.code == 2 and "[0, 2]" in capsys.readouterr().err


def test_video_sink_discards_partial_file_on_error(tmp_path):
    path = tmp_path / "crash.mp4"
    with pytest.raises(RuntimeError):
        with VideoFileSink(str(path), 32, 32, 10) as sink:
            sink.send(np.zeros((32, 32, 3), np.uint8))
            raise RuntimeError("boom")
    assert not path.exists() and not list(tmp_path.iterdir())


# -- live mode with injected sources ----------------------------------------------

def index_of(frame):
    return int(frame.reshape(-1)[:4].view("<u4")[0])


def has_note(frame):
    """The 'camera lost' note sits bottom-left; source frames are flat there."""
    corner = frame[-12:, :24]
    return corner.min() != corner.max()


class CountingSource:
    """Frame k carries k in its first 4 bytes (flat grey elsewhere); optional hooks make
    it fail and come back."""
    self_paced, finite = True, False

    def __init__(self, fps=200.0, shape=(24, 32)):
        self.fps = fps
        self.height, self.width = shape
        self.produced = 0
        self.cond = threading.Condition()
        self.fail_from = None
        self.reopened = threading.Event()
        self.allow_reconnect = threading.Event()
        self.reopen_attempts = 0

    def read(self):
        if self.fail_from is not None and self.produced >= self.fail_from and not self.reopened.is_set():
            return None
        with self.cond:
            frame = self.make_frame(self.produced)
            frame.reshape(-1)[:4] = np.array([self.produced], "<u4").view(np.uint8)
            self.produced += 1
            self.cond.notify_all()
        return frame

    def make_frame(self, index):
        return np.full((self.height, self.width, 3), 7, np.uint8)

    def reopen(self):
        self.reopen_attempts += 1
        if not self.allow_reconnect.is_set():
            return False
        self.reopened.set()
        return True

    def wait_produced(self, n):
        with self.cond:
            self.cond.wait_for(lambda: self.produced >= n, timeout=10)


class RecordingSink:
    def __init__(self, on_frame=None):
        self.frames = []
        self.on_frame = on_frame

    def send(self, frame):
        self.frames.append(frame.copy())
        if self.on_frame:
            self.on_frame(frame)


class Bypass:
    """A sharpener stand-in in 'off' mode; optionally waits until the camera moved on."""
    model_ms = 0.0

    def __init__(self, source=None, lag=0):
        self.source, self.lag = source, lag

    def process(self, frame, state):
        if self.source is not None:
            self.source.wait_produced(index_of(frame) + 1 + self.lag)
        return frame


def test_frame_slot_keeps_only_the_newest():
    slot = FrameSlot()
    for k in range(5):
        slot.put(np.full((2, 2, 3), k, np.uint8))
    seq, frame, _ = slot.newer_than(0, timeout=0)
    assert seq == 5 and frame[0, 0, 0] == 4
    assert slot.newer_than(5, timeout=0) is None


def test_slow_processing_drops_frames_instead_of_queueing():
    source = CountingSource()
    sink = RecordingSink()
    # Each frame is processed only after the camera has produced 3 more: the pipeline is "slow".
    pipe = Pipeline(source, Bypass(source, lag=3), Controls(), [sink], max_frames=6)
    summary = pipe.run_live()
    values = [index_of(f) for f in sink.frames]
    assert summary.frames == 6 and len(values) == 6
    assert all(b > a for a, b in zip(values, values[1:]))
    assert summary.dropped >= 6  # at least 2 skipped per processed frame after the first
    assert values[-1] - values[0] >= 2 * 5


def test_camera_lost_keeps_frames_flowing_then_recovers():
    source = CountingSource()
    source.fail_from = 5

    def on_frame(frame):
        if has_note(frame):
            source.allow_reconnect.set()

    sink = RecordingSink(on_frame)
    pipe = Pipeline(source, Bypass(), Controls(ControlState(mode="off")), [sink], max_frames=12,
                    reconnect_delays=(0.001,))
    summary = pipe.run_live()
    flags = [has_note(f) for f in sink.frames]
    first_lost = flags.index(True)
    assert first_lost >= 1
    assert flags[first_lost + 1:].count(False) >= 1, "no fresh frames after reconnecting"
    resumed = [index_of(f) for f in sink.frames[first_lost:] if not has_note(f)]
    assert resumed and resumed[0] >= 5
    assert summary.reconnects == 1 and summary.frames == 12
    assert source.reopen_attempts >= 1


def test_a_sink_that_takes_keys_is_polled_while_the_camera_is_lost():
    """The preview handles its keys only when polled: with no frame to send, the pipeline
    must poll it, or q and the close button stop working while the camera is away."""
    source = CountingSource()
    source.fail_from = 2

    class KeyRecordingSink(RecordingSink):
        polls = 0

        def poll_keys(self):
            self.polls += 1
            if self.polls == 3:
                source.allow_reconnect.set()

    keys, plain = KeyRecordingSink(), RecordingSink()
    controls = Controls()
    give_up = threading.Timer(20.0, controls.quit.set)  # unpolled, the camera never comes back
    give_up.start()
    try:
        summary = Pipeline(source, Bypass(), controls, [plain, keys], max_frames=4,
                           reconnect_delays=(0.001,)).run_live()
    finally:
        give_up.cancel()
    assert summary.reconnects == 1 and keys.polls >= 3
    assert not hasattr(plain, "poll_keys")  # a sink without keys is left alone


def test_quit_key_stops_live_pipeline():
    source = CountingSource()
    controls = Controls()

    def on_frame(frame):
        if len(sink.frames) == 3:
            controls.press("q")

    sink = RecordingSink(on_frame)
    summary = Pipeline(source, Bypass(), controls, [sink]).run_live()
    assert summary.frames == 3


def test_key_applies_on_the_next_frame():
    source = CountingSource()
    controls = Controls(ControlState(mode="off"))
    states = []

    class StateRecorder:
        model_ms = 0.0

        def process(self, frame, state):
            states.append(state.mirror)
            if len(states) == 2:
                controls.press("m")
            return frame

    Pipeline(source, StateRecorder(), controls, [RecordingSink()], max_frames=4).run_live()
    assert states == [False, False, True, True]


class TexturedSource(CountingSource):
    """Random texture, different for every frame, so the model has detail to work on."""

    def make_frame(self, index):
        return np.random.default_rng(index).integers(0, 256, (self.height, self.width, 3), np.uint8)


class InputRecorder:
    """Wraps a sharpener and keeps the frames it was given and the state each was processed
    with (live mode may drop some frames)."""

    def __init__(self, sharpener):
        self.sharpener, self.inputs, self.states = sharpener, [], []

    @property
    def model_ms(self):
        return self.sharpener.model_ms

    def process(self, frame, state):
        self.inputs.append(frame.copy())
        self.states.append(state)
        return self.sharpener.process(frame, state)


def engine_on_whole_frame(engine, frame):
    """The model's own result for a BGR frame (sides multiples of its size_multiple): the
    engine run directly on the whole frame, as float BGR in [0, 255]."""
    batch = frame[..., ::-1].transpose(2, 0, 1)[None].astype(np.float32) / 255
    return engine.run(np.ascontiguousarray(batch))[0][::-1].transpose(1, 2, 0) * 255


def test_live_pipeline_sends_the_models_frame_and_keys_change_it(engine):
    """With the real engine (tiled), each frame sent is the model's own result for that
    frame under the state it was sharpened with; space sends the input untouched, s the
    split view, - lowers the strength.  The next frame is being sharpened while one is sent,
    so a key reaches the frame after next at the latest."""
    source = TexturedSource(shape=(96, 128))  # 3x4 tiles of 32 in 56x56 windows
    controls = Controls()
    keys_after = {2: " ", 4: " s", 6: "s-----"}  # after the Nth frame: off, split, on at 0.5

    def on_frame(frame):
        for key in keys_after.get(len(sink.frames), ""):
            controls.press(key)

    sink = RecordingSink(on_frame)
    sharpener = InputRecorder(Sharpener(engine, tile=32))
    summary = Pipeline(source, sharpener, controls, [sink], max_frames=8).run_live()
    assert summary.frames == 8 and summary.model_ms > 0
    sent, inputs, states = sink.frames, sharpener.inputs[:8], sharpener.states[:8]
    for key_frame in keys_after:  # each press took effect by the frame after next
        assert states[key_frame + 1] != states[key_frame - 1]
    seen = {(state.mode, state.strength) for state in states}
    assert seen == {("on", 1.0), ("off", 1.0), ("split", 1.0), ("on", 0.5)}

    mid = source.width // 2
    for out, frame, state in zip(sent, inputs, states):
        raw = engine_on_whole_frame(engine, frame)
        model = np.clip(raw, 0, 255)
        if state.mode == "off":
            assert np.array_equal(out, frame)
        elif state.mode == "split":
            assert np.array_equal(out[:, :mid - 1], frame[:, :mid - 1])
            assert np.all(out[:, mid - 1:mid + 1] == 255)
            assert np.abs(out[:, mid + 1:].astype(int) - model[:, mid + 1:]).max() <= 1
        elif state.strength == 1.0:
            assert np.abs(out.astype(int) - model).max() <= 1
            assert np.abs(out.astype(int) - frame).mean() > 2  # the model changed the frame
        else:
            blend = np.clip(frame + 0.5 * (raw - frame), 0, 255)
            assert np.abs(out.astype(int) - blend).max() <= 1


def test_rate_meter_counts_frames_per_second_over_its_window():
    from sharpcam.pipeline import RateMeter
    clock = FakeClock()
    meter = RateMeter(window=2.0, clock=clock)
    meter.tick()
    assert meter.rate == 0.0  # one event is no rate yet
    for k in range(1, 31):  # 10 frames a second for 3 s
        clock.t = k * 0.1
        meter.tick()
    assert meter.rate == pytest.approx(10.0)
    for k in range(1, 61):  # then 25 a second: after 2.4 s the window holds only these
        clock.t = 3.0 + k * 0.04
        meter.tick()
    assert meter.rate == pytest.approx(25.0)


def test_progress_draws_a_bar_of_frames_done():
    stream, clock = io.StringIO(), FakeClock()
    progress = Progress(40, StatusLine(stream, clock=clock))
    for done, fps in ((10, 12.5), (40, 30.0)):
        clock.t += 1.0  # a second apart: every update is drawn
        progress.update(done, fps)
    quarter, full = stream.getvalue().splitlines()
    assert quarter == "[" + "#" * (30 * 10 // 40) + " " * (30 - 30 * 10 // 40) + "] 10/40 frames 12.5 fps"
    assert full == "[" + "#" * 30 + "] 40/40 frames 30.0 fps"


def test_file_mode_shows_progress_as_it_goes(tmp_path):
    """run_file reports every frame it writes (the clock lets each line through), then the total."""
    class TickingClock(FakeClock):
        def __call__(self):
            self.t += 1.0
            return self.t

    class FiveFrames(CountingSource):
        finite = True

        def read(self):
            return super().read() if self.produced < 5 else None

    stream = io.StringIO()
    summary = Pipeline(FiveFrames(), Bypass(), Controls(), [RecordingSink()]).run_file(
        Progress(5, StatusLine(stream, clock=TickingClock())))
    lines = stream.getvalue().splitlines()
    assert summary.frames == 5
    assert [line.split("] ")[1].split()[0] for line in lines] == ["1/5", "2/5", "3/5", "4/5", "5/5", "5/5"]


def test_status_line_rate_limited_when_not_a_tty():
    stream, clock = io.StringIO(), FakeClock()
    status = StatusLine(stream, clock=clock)
    for k in range(10):
        clock.t = k * 0.2
        status.update(f"frame {k}")
    lines = stream.getvalue().splitlines()
    assert lines == ["frame 0", "frame 5"]


def test_status_line_rewrites_in_place_on_a_tty():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    stream, clock = Tty(), FakeClock()
    status = StatusLine(stream, clock=clock)
    status.update("a long line")
    clock.t = 1.0
    status.update("short")
    status.finish()
    assert stream.getvalue() == "\ra long line\rshort      \n"


BENCH_CELL = re.compile(r"(\d+\.\d) fps \((\d+\.\d) ms\) cpu (\d+\.\d)")


def test_bench_prints_a_consistent_table(capsys, test_model):
    import os
    sizes = ["64x48", "96x64"]
    assert main(["bench", "--model", str(test_model), "--threads", "1", "--sizes", ",".join(sizes),
                 "--seconds", "0", "--tile", "32"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header, rows = lines[1], lines[2:]
    columns = ["off", "unsharp", "model tile 32", "model whole"]
    assert sorted(columns, key=header.index) == columns and "cpu" in header
    assert [row.split()[0] for row in rows] == sizes  # one row per resolution, in order
    for row in rows:
        cells = [tuple(map(float, cell)) for cell in BENCH_CELL.findall(row)]
        assert len(cells) == len(columns), row
        for fps, ms, cpu in cells:
            # ms is 1000 / fps, each printed to 0.1: the bounds allow for both roundings.
            assert fps > 0.05 and 1000 / (fps + 0.05) - 0.05 <= ms <= 1000 / (fps - 0.05) + 0.05, row
            assert 0 <= cpu <= os.cpu_count(), row  # cores kept busy: never more than there are


def test_source_that_raises_is_treated_as_lost():
    source = CountingSource()

    calls = {"n": 0}
    original_read = source.read

    def read():
        calls["n"] += 1
        if calls["n"] == 3 and not source.reopened.is_set():
            raise RuntimeError("VIDIOC_DQBUF: No such device")
        return original_read()

    source.read = read
    source.allow_reconnect.set()
    sink = RecordingSink()
    summary = Pipeline(source, Bypass(), Controls(ControlState(mode="off")), [sink], max_frames=6,
                       reconnect_delays=(0.001,)).run_live()
    assert summary.frames == 6 and summary.reconnects == 1


def test_live_recording_repeats_frames_to_keep_time(tmp_path):
    clock = FakeClock()
    path = tmp_path / "live.avi"
    with VideoFileSink(str(path), 32, 24, 10.0, realtime=True, clock=clock) as sink:
        sink.send(np.zeros((24, 32, 3), np.uint8))  # t=0: frame 1
        clock.t = 0.35                               # 3 more frame times have passed
        sink.send(np.full((24, 32, 3), 255, np.uint8))
        clock.t = 0.36                               # faster than the rate: still one frame
        sink.send(np.full((24, 32, 3), 128, np.uint8))
    assert sink.frames == 5
    assert video_facts(path)[0] == 5


def test_camera_back_at_another_size_keeps_sink_size():
    source = CountingSource(shape=(24, 32))
    real_read = source.read

    def read():
        frame = real_read()
        return cv2.resize(frame, (64, 48)) if index_of(frame) >= 2 else frame

    source.read = read
    sink = RecordingSink()
    Pipeline(source, Bypass(), Controls(), [sink], max_frames=4).run_live()
    assert [f.shape for f in sink.frames] == [(24, 32, 3)] * 4


def test_status_note_stays_above_the_status_line_on_a_tty():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    stream, clock = Tty(), FakeClock()
    status = StatusLine(stream, clock=clock)
    status.update("status 1")
    status.note("warning")
    status.update("status 2")  # at once: the note removed the line, so it is drawn again
    assert stream.getvalue() == "\rstatus 1\r        \rwarning\n\rstatus 2"


def test_sigterm_in_file_mode_finishes_the_file(tmp_path, test_model):
    """`kill -TERM` during `--input clip --loop --output out` keeps what was written."""
    clip = write_clip(tmp_path / "clip.avi", frames=6)
    out = tmp_path / "out.avi"
    code, stdout, stderr = sharpcam_stopped_by_sigterm(
        ["--input", clip, "--loop", "--output", out, "--model", test_model], " frames ")  # the progress line
    assert code == 128 + signal.SIGTERM, stderr
    written = int(re.search(r"frames=(\d+)", stdout).group(1))
    assert written >= 1 and video_facts(out)[0] == written
    assert not list(tmp_path.glob(".*partial*")) and os.path.exists(clip)
    assert "SIGTERM" in stderr and "Traceback" not in stderr


def test_odd_frame_size_is_kept_in_the_output_file(tmp_path, test_model):
    clip = write_clip(tmp_path / "odd.avi", frames=3, size=(33, 17))
    assert video_facts(clip) == (3, (17, 33, 3))
    out = tmp_path / "out.avi"
    assert main(["--input", str(clip), "--output", str(out), "--model", str(test_model)]) == 0
    assert video_facts(out) == (3, (17, 33, 3))


def test_odd_frame_size_into_an_even_only_format_is_refused(tmp_path, capsys, test_model):
    clip = write_clip(tmp_path / "odd.avi", frames=3, size=(33, 17))
    out = tmp_path / "out.mp4"
    assert main(["--input", str(clip), "--output", str(out), "--model", str(test_model)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("sharpcam: error: --output") and "33x17" in err[-1] and ".avi" in err[-1]
    assert not out.exists() and not list(tmp_path.glob(".*partial*"))


def test_ctrl_c_in_file_mode_keeps_the_file_and_prints_the_summary(tmp_path, monkeypatch, capsys,
                                                                    test_model):
    from sharpcam.sources import VideoFileSource
    clip = write_clip(tmp_path / "clip.avi", frames=12)
    real_read = VideoFileSource.read
    reads = {"n": 0}

    def read(self):
        reads["n"] += 1
        if reads["n"] == 4:
            raise KeyboardInterrupt  # what Ctrl-C raises in the main thread
        return real_read(self)

    monkeypatch.setattr(VideoFileSource, "read", read)
    out = tmp_path / "out.avi"
    assert main(["--input", str(clip), "--output", str(out), "--model", str(test_model)]) == 130
    captured = capsys.readouterr()
    assert re.fullmatch(r"frames=3 fps=\d+\.\d model_ms=\d+\.\d cpu=\d+\.\d\d",
                        captured.out.strip().splitlines()[-1])
    last = captured.err.strip().splitlines()[-1]
    assert "interrupted" in last and str(out) in last and "camera" not in last
    assert video_facts(out)[0] == 3 and not list(tmp_path.glob(".*partial*"))


def test_looping_progress_counts_against_max_frames_not_the_clip(tmp_path, capsys, test_model):
    clip = write_clip(tmp_path / "clip.avi", frames=12)
    assert main(["--input", str(clip), "--loop", "--max-frames", "30", "--output",
                 str(tmp_path / "out.avi"), "--model", str(test_model)]) == 0
    progress = [line for line in capsys.readouterr().err.splitlines() if " frames " in line]
    assert progress[-1].split("]")[1].split()[0] == "30/30", progress
    assert not any("/12 " in line for line in progress), progress


def test_progress_never_shows_more_done_than_total():
    stream = io.StringIO()
    Progress(90, StatusLine(stream)).update(14805, 30.0, force=True)
    assert "14805/90" not in stream.getvalue() and "14805 frames" in stream.getvalue()


class BusyEngine:
    """An engine stand-in that keeps a core busy for 20 ms of CPU time per run."""
    receptive_radius, size_multiple, last_ms, reads_whole_frame = 0, 1, 20.0, False

    def run(self, batch):
        import time
        end = time.thread_time() + 0.020
        while time.thread_time() < end:
            pass
        return batch


class SleepingEngine(BusyEngine):
    """Takes as long, but waits instead of computing (as a GPU or another process would)."""

    def run(self, batch):
        import time
        time.sleep(0.020)
        return batch


def test_bench_reports_cpu_use_next_to_frames_per_second():
    from sharpcam.bench import bench
    cpu = {}
    for name, engine in (("busy", BusyEngine()), ("sleeping", SleepingEngine())):
        stream = io.StringIO()
        rows = bench(engine, sizes=((32, 24),), tile=32, seconds=0.1, out=stream)
        assert "cpu" in stream.getvalue().splitlines()[0]
        (_, cells), = rows
        fps, cpu[name] = cells[-1]  # the whole-frame model column
        assert fps > 0
    # With a share s of a core, the busy engine reads s, the sleeping one c / (20 ms + c / s)
    # for the pipeline's own c (~0.5 ms) CPU per frame: their ratio is 1 + s * 20 ms / c,
    # above 1.5 for any share over 1.3% of a core. Timing never enters the assertion.
    assert cpu["busy"] > 1.5 * cpu["sleeping"]


def test_paced_bench_never_feeds_faster_than_the_camera_and_idles_between_frames():
    """At 10 frames/s a 20 ms-per-frame engine has 80 ms of each 100 to wait: frames/s
    drops to the pace and the CPU use with it. Frame counts, not timings, are asserted:
    frame k waits for k/pace seconds, so n frames take at least (n - 1)/pace."""
    from sharpcam.bench import time_pipeline
    from sharpcam.sharpen import Sharpener
    frames = [np.full((24, 32, 3), v, np.uint8) for v in (10, 20)]
    _, free_cpu = time_pipeline(frames, Sharpener(BusyEngine(), tile=0), seconds=0.3)
    paced_fps, paced_cpu = time_pipeline(frames, Sharpener(BusyEngine(), tile=0), seconds=0.3,
                                         pace=10.0)
    frames_run = max(3, round(paced_fps * 0.3))
    assert paced_fps <= 10.0 * frames_run / (frames_run - 1)
    assert paced_cpu < 0.6 * free_cpu


def test_cpu_meter_is_cpu_seconds_per_second_over_its_window():
    from sharpcam.pipeline import CpuMeter
    wall, cpu = FakeClock(), FakeClock()
    meter = CpuMeter(window=2.0, clock=wall, cpu_clock=cpu)
    assert meter.cores == 0.0
    for k in range(1, 11):  # 1.5 cores busy for 5 s
        wall.t, cpu.t = k * 0.5, k * 0.75
        meter.tick()
    assert meter.cores == pytest.approx(1.5)
    for k in range(11, 21):  # then idle: the window forgets the busy part
        wall.t = k * 0.5
        meter.tick()
    assert meter.cores == pytest.approx(0.0)


def test_live_status_line_and_summary_show_cpu_use():
    stream = io.StringIO()
    source = CountingSource()
    summary = Pipeline(source, Bypass(), Controls(), [RecordingSink()], status=StatusLine(stream),
                       max_frames=5).run_live()
    assert re.search(r"\| cpu \d+\.\d \|", stream.getvalue().splitlines()[-1])
    assert re.fullmatch(r"frames=5 fps=\d+\.\d model_ms=\d+\.\d cpu=\d+\.\d\d", summary.line())


def test_capture_does_not_spin_on_a_source_that_returns_at_once():
    """A camera's read() blocks until its next frame; a frozen driver or a virtual source
    returns the same frame at once. The capture loop must then wait, not spin a core.
    The bound below is an upper bound: a slow machine only makes fewer reads."""
    import time

    class FrozenCamera:
        self_paced, finite, fps, height, width = True, False, 50.0, 8, 12
        reads = 0

        def read(self):
            FrozenCamera.reads += 1
            return np.full((8, 12, 3), 90, np.uint8)

    controls = Controls(ControlState(mode="off"))
    stopper = threading.Timer(0.5, controls.quit.set)
    start = time.perf_counter()
    stopper.start()
    Pipeline(FrozenCamera(), Bypass(), controls, [RecordingSink()]).run_live()
    elapsed = time.perf_counter() - start
    assert FrozenCamera.reads <= 2 * FrozenCamera.fps * elapsed + 2, (FrozenCamera.reads, elapsed)


@pytest.mark.parametrize("mode", ["run_live", "run_file"])
def test_the_next_frame_is_sharpened_while_the_sinks_send_this_one(mode):
    """A frame's time is the slower of model and sinks, not their sum: each send waits
    until the sharpener has started on a later frame, which only a pipeline that overlaps
    the two lets happen.  Sinks stay on the calling thread (a preview window must be drawn
    by the thread that made it); the model runs on another."""
    source = CountingSource()
    started = []
    started_cond = threading.Condition()
    sharpener_threads, sink_threads, overlapped = set(), set(), []

    class NotingSharpener:
        model_ms = 0.0

        def process(self, frame, state):
            sharpener_threads.add(threading.get_ident())
            with started_cond:
                started.append(index_of(frame))
                started_cond.notify_all()
            return frame

    def on_frame(frame):
        sink_threads.add(threading.get_ident())
        if len(overlapped) < 5:  # the sixth and last frame has no successor to wait for
            with started_cond:
                overlapped.append(started_cond.wait_for(lambda: started[-1] > index_of(frame), timeout=5))

    sink = RecordingSink(on_frame)
    pipeline = Pipeline(source, NotingSharpener(), Controls(), [sink], max_frames=6)
    summary = getattr(pipeline, mode)()
    assert summary.frames == 6 and overlapped == [True] * 5
    if mode == "run_file":  # every frame, in order
        assert [index_of(frame) for frame in sink.frames] == list(range(6))
    assert sink_threads == {threading.get_ident()}
    assert threading.get_ident() not in sharpener_threads


@pytest.mark.parametrize("mode", ["run_live", "run_file"])
def test_an_error_in_the_sharpener_ends_the_run_with_that_error(mode):
    class BrokenSharpener:
        model_ms = 0.0

        def process(self, frame, state):
            raise RuntimeError("engine failed")

    sink = RecordingSink()
    with pytest.raises(RuntimeError, match="engine failed"):
        getattr(Pipeline(CountingSource(), BrokenSharpener(), Controls(), [sink], max_frames=5), mode)()
    assert sink.frames == []


@pytest.mark.parametrize("mode", ["run_live", "run_file"])
def test_no_frame_is_sharpened_past_max_frames(mode):
    """The input sinks (--save-frames) get exactly the frames that were sent, even though
    the sharpener works a frame ahead of the sinks."""
    inputs, outputs = RecordingSink(), RecordingSink(on_frame=lambda frame: time.sleep(0.1))
    pipeline = Pipeline(CountingSource(), Bypass(), Controls(), [outputs], max_frames=5,
                        input_sinks=[inputs])
    summary = getattr(pipeline, mode)()
    assert summary.frames == 5 and len(outputs.frames) == 5
    assert [index_of(f) for f in inputs.frames] == [index_of(f) for f in outputs.frames]


# -- frames in flight ---------------------------------------------------------------

class ConcurrentMarker:
    """A sharpener stand-in whose lanes record how many frames are being processed at
    once, take an uneven time each (so lanes finish out of order) and mark the output."""

    def __init__(self, shared=None):
        self.shared = shared if shared is not None else dict(lock=threading.Lock(), now=0, most=0, lanes=1,
                                                             shared_lane=0)
        self.model_ms = 1.0
        self.busy = False  # a lane's buffers serve one frame at a time

    def sibling(self):
        self.shared["lanes"] += 1
        return ConcurrentMarker(self.shared)

    def process(self, frame, state):
        shared = self.shared
        with shared["lock"]:
            shared["now"] += 1
            shared["most"] = max(shared["most"], shared["now"])
            shared["shared_lane"] += self.busy
            self.busy = True
        # Frames 0, 3, 6, … take longest: the frame after each overtakes it in another lane.
        time.sleep(0.03 if index_of(frame) % 3 == 0 else 0.002)
        out = frame.copy()
        out[-1, -1] = 200
        with shared["lock"]:
            shared["now"] -= 1
            self.busy = False
        return out


class ReusedBufferSource(CountingSource):
    """Hands out the same buffer every time, rewritten: what a camera driver may do."""
    self_paced, finite = False, True

    def __init__(self, frames):
        super().__init__()
        self.buffer = np.full((self.height, self.width, 3), 7, np.uint8)
        self.total = frames

    def make_frame(self, index):
        return self.buffer

    def read(self):
        return None if self.produced >= self.total else super().read()


@pytest.mark.parametrize("lanes", [1, 2, 3])
def test_frames_in_flight_sharpen_side_by_side_and_arrive_in_order(lanes):
    marker = ConcurrentMarker()
    sink = RecordingSink()
    summary = Pipeline(ReusedBufferSource(12), marker, Controls(), [sink], frames_in_flight=lanes).run_file()
    # Every frame, in the source's order, each the lane's output for that very frame (the
    # source rewrote its buffer for the next frame while lanes were still working on it).
    assert [index_of(f) for f in sink.frames] == list(range(12)) and summary.frames == 12
    assert all(f[-1, -1, 0] == 200 for f in sink.frames)
    assert marker.shared["lanes"] == lanes
    assert marker.shared["most"] == lanes  # side by side, and never more than asked
    assert marker.shared["shared_lane"] == 0  # never two frames in one lane at once


def test_two_frames_in_flight_send_what_one_at_a_time_sends(engine):
    """The real engine and sharpener: lanes share the engine and the tiling but not the
    buffers, so each frame comes out exactly as it does one frame at a time."""
    class Finite(TexturedSource):
        self_paced, finite = False, True

        def read(self):
            return None if self.produced >= 8 else super().read()

    sent = {}
    for lanes in (1, 2):
        sink = RecordingSink()
        Pipeline(Finite(shape=(48, 64)), Sharpener(engine, tile=32), Controls(), [sink],
                 frames_in_flight=lanes).run_file()
        sent[lanes] = sink.frames
    assert len(sent[2]) == 8 and all(np.array_equal(a, b) for a, b in zip(sent[1], sent[2]))
    given = Finite(shape=(48, 64)).make_frame(3)
    given.reshape(-1)[:4] = np.array([3], "<u4").view(np.uint8)
    assert np.abs(sent[2][3].astype(int) - given).mean() > 1  # the model's work, not the input


def test_while_one_lane_keeps_up_every_frame_runs_in_it():
    """Frames slower than the lane: the lane freed last (warm buffers, warm cache) takes
    each; taken in turn, the lanes would alternate."""
    class PacedSource(ReusedBufferSource):
        def read(self):
            time.sleep(0.01)
            return super().read()

    used = []

    class Recording(ConcurrentMarker):
        def process(self, frame, state):
            used.append(id(self))
            return frame

        def sibling(self):
            return Recording(self.shared)

    Pipeline(PacedSource(8), Recording(), Controls(), [RecordingSink()], frames_in_flight=2).run_file()
    assert len(used) == 8 and len(set(used)) == 1


def test_frames_in_flight_in_live_mode_keep_frames_in_order():
    source = CountingSource()
    sink = RecordingSink()
    marker = ConcurrentMarker()
    summary = Pipeline(source, marker, Controls(), [sink], max_frames=10, frames_in_flight=2).run_live()
    values = [index_of(f) for f in sink.frames]
    assert summary.frames == 10 and all(b > a for a, b in zip(values, values[1:]))
    assert marker.shared["most"] == 2


def test_a_lane_that_fails_ends_the_run_with_its_error():
    class Failing(ConcurrentMarker):
        def process(self, frame, state):
            if index_of(frame) == 4:
                raise RuntimeError("lane broke")
            return super().process(frame, state)

        def sibling(self):
            return Failing(self.shared)

    sink = RecordingSink()
    with pytest.raises(RuntimeError, match="lane broke"):
        Pipeline(ReusedBufferSource(12), Failing(), Controls(), [sink], frames_in_flight=2).run_file()
    assert [index_of(f) for f in sink.frames] == [0, 1, 2, 3]  # in order, up to the broken frame


def test_the_bench_source_never_hands_out_the_same_frame_twice_in_a_row():
    from sharpcam.bench import _RepeatSource
    frames = [np.zeros((4, 6, 3), np.uint8), np.zeros((4, 6, 3), np.uint8)]  # identical content
    source = _RepeatSource(frames, seconds=None)
    seen = [source.read().copy() for _ in range(600)]
    # Every lane of any number of frames in flight gets some later frame next: none may equal
    # any of the few before it, or the sharpener would skip the model and the bench flatter it.
    assert all(not np.array_equal(seen[k], seen[k - gap]) for k in range(8, 600) for gap in range(1, 9))


def test_bench_with_frames_in_flight_says_so_and_fills_every_column(capsys, test_model):
    assert main(["bench", "--model", str(test_model), "--threads", "1", "--frames-in-flight", "2",
                 "--sizes", "64x48", "--seconds", "0", "--tile", "32"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "2 frames at once" in lines[0]
    assert len(BENCH_CELL.findall(lines[2])) == 4


def test_frames_in_flight_under_threads_auto_run_one_thread_each(capsys, test_model, monkeypatch):
    import sharpcam.engine_choice as engine_choice
    monkeypatch.setattr(engine_choice, "default_threads", lambda: 2)  # as on a 2-core machine
    for in_flight, threads in (("1", "2 threads"), ("2", "1 thread")):
        assert main(["bench", "--model", str(test_model), "--frames-in-flight", in_flight,
                     "--sizes", "64x48", "--seconds", "0"]) == 0
        out = capsys.readouterr().out
        assert threads in out.splitlines()[0] + out.splitlines()[1], (in_flight, out)
    # Two in flight: one thread each, and no column for a thread count that is not an option.
    assert "threads" not in out.splitlines()[1] and "a column for each candidate" not in out


@pytest.mark.parametrize("value", ["0", "9", "two"])
def test_frames_in_flight_out_of_range_is_a_usage_error(value, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--frames-in-flight", value])
    assert exc.value.code == 2 and "--frames-in-flight" in capsys.readouterr().err
