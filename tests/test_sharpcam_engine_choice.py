"""--precision and --threads: the INT8 sibling is found, checked against its fp32 model, and
kept only when it measures faster; with --threads auto a second thread only when one cannot
keep up with the camera."""
import numpy as np
import pytest

from conftest import FakeClock, build_test_model
from sharpcam.cli import main
from sharpcam.engine import Engine, ModelError
from sharpcam.engine_choice import (MODEL_SHARE_OF_FRAME, SOURCE_HASH_KEY, EngineChoice,
                                    file_sha256, int8_sibling, open_engine, pick)


class FakeEngine:
    """Each run takes the next of ``ms`` (cycling) on the fake clock."""

    def __init__(self, clock, ms, threads=1):
        self.clock, self.ms, self.runs, self.last_ms = clock, list(ms), 0, 0.0
        self.threads = threads
        self.receptive_radius, self.size_multiple, self.reads_whole_frame = 8, 4, False

    def run(self, batch):
        self.last_ms = self.ms[self.runs % len(self.ms)]
        self.clock.t += self.last_ms / 1000.0
        self.runs += 1
        return batch

    def warm_up(self, shape, frame_ms=None):
        self.run(np.zeros(shape, np.float32))
        return self.last_ms

    def describe(self):
        return "fake"

    def close(self):
        pass


@pytest.mark.parametrize("fp32_ms,int8_ms,expected", [(30, 20, "int8"), (20, 30, "fp32")])
def test_precision_choice_follows_the_measured_times(fp32_ms, int8_ms, expected):
    clock = FakeClock()
    engines = {"fp32": FakeEngine(clock, [fp32_ms]), "int8": FakeEngine(clock, [int8_ms])}
    choice = EngineChoice(engines, repeats=5, clock=clock)
    choice.warm_up((1, 3, 48, 64))
    assert choice.chosen == expected
    assert choice.timings == pytest.approx({"fp32": fp32_ms, "int8": int8_ms})
    assert f"fp32 {fp32_ms:.1f} ms, int8 {int8_ms:.1f} ms" in choice.choice_note
    assert choice.choice_note.endswith(f"-> {expected}")
    before = {name: e.runs for name, e in engines.items()}
    choice.run(np.zeros((1, 3, 48, 64), np.float32))
    assert {name: e.runs - before[name] for name, e in engines.items()} == {
        "fp32": expected == "fp32", "int8": expected == "int8"}


def test_precision_choice_uses_the_median_not_the_mean():
    clock = FakeClock()
    # One 200 ms hiccup (another process took the core) must not hand the choice to INT8.
    fp32 = FakeEngine(clock, [30, 30, 30, 200, 30, 30])  # first run is the untimed warm-up
    choice = EngineChoice({"fp32": fp32, "int8": FakeEngine(clock, [40])}, repeats=5, clock=clock)
    assert choice.choose((1, 3, 8, 8)) == "fp32"


def test_before_the_choice_runs_go_to_fp32():
    clock = FakeClock()
    engines = {"fp32": FakeEngine(clock, [1]), "int8": FakeEngine(clock, [1])}
    choice = EngineChoice(engines, clock=clock)
    choice.run(np.zeros((1, 3, 8, 8), np.float32))
    assert (engines["fp32"].runs, engines["int8"].runs) == (1, 0)


@pytest.mark.parametrize("one_ms,two_ms,frame_ms,expected", [
    (20, 12, 33.3, "1 thread"),    # one thread keeps up: the second would only cost CPU
    (30, 18, 33.3, "2 threads"),   # one thread would drop frames
    (60, 40, 33.3, "2 threads"),   # neither keeps up: the faster
    (20, 12, None, "2 threads"),   # no camera to keep up with (a file): the faster
])
def test_thread_choice_keeps_the_fewest_threads_that_keep_up(one_ms, two_ms, frame_ms, expected):
    clock = FakeClock()
    engines = {"1 thread": FakeEngine(clock, [one_ms], threads=1),
               "2 threads": FakeEngine(clock, [two_ms], threads=2)}
    choice = EngineChoice(engines, repeats=3, clock=clock)
    choice.warm_up((1, 3, 48, 64), frame_ms=frame_ms)
    assert choice.chosen == expected and choice.threads == int(expected[0])
    assert choice.choice_note.endswith(f"-> {expected}")


def test_the_budget_is_the_models_share_of_the_frame_interval():
    threads = {"fp32 1 thread": 1, "int8 1 thread": 1, "fp32 2 threads": 2}
    share = MODEL_SHARE_OF_FRAME * 40.0
    # Of the one-thread candidates that fit, the faster precision.
    assert pick({"fp32 1 thread": share, "int8 1 thread": share - 1, "fp32 2 threads": 5},
                threads, frame_ms=40.0) == "int8 1 thread"
    assert pick({"fp32 1 thread": share + 0.1, "int8 1 thread": share + 0.2, "fp32 2 threads": 5},
                threads, frame_ms=40.0) == "fp32 2 threads"


def test_threads_auto_opens_one_thread_and_the_default_count(fp32_model, monkeypatch):
    monkeypatch.setattr("sharpcam.engine.os.cpu_count", lambda: 8)  # default: 7 less... at most 4
    engine = open_engine(fp32_model, "auto", device="cpu", threads="auto")
    assert isinstance(engine, EngineChoice)
    assert {name: e.threads for name, e in engine.engines.items()} == {"1 thread": 1, "4 threads": 4}
    monkeypatch.setattr("sharpcam.engine.os.cpu_count", lambda: 1)
    assert open_engine(fp32_model, "auto", device="cpu", threads="auto").threads == 1  # nothing to choose
    build_test_model(int8_sibling(fp32_model), seed=1)
    monkeypatch.setattr("sharpcam.engine.os.cpu_count", lambda: 2)
    engine = open_engine(fp32_model, "auto", device="cpu", threads="auto")
    assert list(engine.engines) == ["fp32 1 thread", "fp32 2 threads", "int8 1 thread", "int8 2 threads"]


def test_threads_auto_opens_one_session_on_a_gpu(fp32_model, monkeypatch):
    monkeypatch.setattr("sharpcam.engine.os.cpu_count", lambda: 8)
    monkeypatch.setattr("sharpcam.engine_choice.runs_on_cpu", lambda device: False)
    assert isinstance(open_engine(fp32_model, "auto", device="auto", threads="auto"), Engine)


def test_int8_sibling_name():
    assert int8_sibling("/a/student.onnx") == "/a/student.int8.onnx"
    assert int8_sibling("model") == "model.int8.onnx"


@pytest.fixture
def fp32_model(tmp_path):
    return build_test_model(tmp_path / "student.onnx")


def test_precision_int8_without_sibling_is_a_model_error(fp32_model):
    with pytest.raises(ModelError, match="training.quantize"):
        open_engine(fp32_model, "int8", device="cpu")
    assert isinstance(open_engine(fp32_model, "auto", device="cpu"), Engine)


def test_auto_with_a_sibling_measures_both(fp32_model):
    build_test_model(int8_sibling(fp32_model), seed=1)
    engine = open_engine(fp32_model, "auto", device="cpu", threads=1)
    assert isinstance(engine, EngineChoice) and set(engine.engines) == {"fp32", "int8"}
    engine.warm_up((1, 3, 32, 48))
    assert engine.chosen in ("fp32", "int8") and engine.info.path == engine.engines[engine.chosen].info.path
    assert open_engine(fp32_model, "int8", device="cpu").info.path == int8_sibling(fp32_model)
    assert open_engine(fp32_model, "fp32", device="cpu").info.path == str(fp32_model)


def test_a_sibling_made_from_another_fp32_model_is_not_used(fp32_model):
    import onnx
    sibling = build_test_model(int8_sibling(fp32_model), seed=1)
    model = onnx.load(sibling)
    model.metadata_props.add(key=SOURCE_HASH_KEY, value="0" * 64)
    onnx.save(model, sibling)
    heard = []
    engine = open_engine(fp32_model, "auto", notify=heard.append, device="cpu")
    assert isinstance(engine, Engine) and engine.info.path == str(fp32_model)
    assert len(heard) == 1 and "another version" in heard[0]
    with pytest.raises(ModelError, match="another version"):
        open_engine(fp32_model, "int8", device="cpu")
    # The right hash is accepted.
    model.metadata_props[-1].value = file_sha256(fp32_model)
    onnx.save(model, sibling)
    assert isinstance(open_engine(fp32_model, "auto", device="cpu"), EngineChoice)


def test_cli_precision_int8_without_sibling_is_one_line(tmp_path, capsys, fp32_model):
    rc = main(["--demo", "--output", str(tmp_path / "out.avi"), "--model", str(fp32_model),
               "--precision", "int8"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1
    assert err[0].startswith("sharpcam: error: --precision int8: no INT8 model") and "student.int8.onnx" in err[0]
    assert not (tmp_path / "out.avi").exists()


def test_cli_auto_prints_the_choice_and_both_times(tmp_path, capsys, fp32_model):
    build_test_model(int8_sibling(fp32_model), seed=1)
    rc = main(["--demo", "--output", str(tmp_path / "out.avi"), "--max-frames", "2", "--width", "64",
               "--height", "48", "--model", str(fp32_model), "--tile", "0", "--threads", "1"])
    err = capsys.readouterr().err
    assert rc == 0
    (line,) = [ln for ln in err.splitlines() if "auto engine" in ln]
    assert "fp32" in line and "int8" in line and line.count(" ms") == 2
    assert line.endswith("-> fp32") or line.endswith("-> int8")


def test_cli_threads_auto_measures_against_the_cameras_frame_interval(tmp_path, capsys, fp32_model,
                                                                     monkeypatch):
    monkeypatch.setattr("sharpcam.engine.os.cpu_count", lambda: 2)
    # Live (the virtual camera asked for, the output file beside it): frames at the demo's rate.
    # One frame at a time: the threads per frame are what --threads auto chooses then.
    rc = main(["--demo", "--vcam", "--output", str(tmp_path / "out.avi"), "--max-frames", "2", "--width", "64",
               "--height", "48", "--fps", "20", "--model", str(fp32_model), "--tile", "0",
               "--frames-in-flight", "1"])
    err = capsys.readouterr().err
    (line,) = [ln for ln in err.splitlines() if "auto engine" in ln]
    assert rc == 0 and "1 thread" in line and "2 threads" in line
    assert f"share of a frame: {MODEL_SHARE_OF_FRAME * 50:.1f} ms" in line  # 20 frames/s: 50 ms


@pytest.mark.parametrize("threads, per_frame", [([], "1 thread"), (["--threads", "2"], "2 threads")])
@pytest.mark.parametrize("cores, at_once", [(2, True), (1, False)])
def test_cli_sharpens_two_frames_at_once_on_two_cores_by_default(cores, at_once, threads, per_frame, tmp_path,
                                                                 capsys, fp32_model, monkeypatch):
    # --threads sets the threads of each frame (one under auto while frames go two at once);
    # how many frames go at once is a separate choice: one frame cannot keep two threads busy.
    monkeypatch.setattr("sharpcam.engine.os.cpu_count", lambda: cores)
    rc = main(["--demo", "--vcam", "--output", str(tmp_path / "out.avi"), "--max-frames", "4", "--width", "64",
               "--height", "48", "--fps", "20", "--model", str(fp32_model), "--tile", "0", *threads])
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("sharpcam: model ")]
    assert rc == 0 and per_frame in line and ("1 thread" in line) != ("2 threads" in line)
    assert ("2 at once" in line) == at_once


def test_bench_times_both_precisions(capsys, fp32_model):
    build_test_model(int8_sibling(fp32_model), seed=1)
    assert main(["bench", "--model", str(fp32_model), "--threads", "1", "--sizes", "64x48",
                 "--seconds", "0", "--tile", "32"]) == 0
    header = capsys.readouterr().out.splitlines()[1]
    assert "model whole fp32" in header and "model whole int8" in header
