"""--precision: the INT8 sibling is found, checked against its fp32 model, and kept only when
it measures faster."""
import numpy as np
import pytest

from conftest import FakeClock, build_test_model
from sharpcam.cli import main
from sharpcam.engine import Engine, ModelError
from sharpcam.precision import (SOURCE_HASH_KEY, PrecisionChoice, file_sha256, int8_sibling,
                                open_engine)


class FakeEngine:
    """Each run takes the next of ``ms`` (cycling) on the fake clock."""

    def __init__(self, clock, ms):
        self.clock, self.ms, self.runs, self.last_ms = clock, list(ms), 0, 0.0
        self.receptive_radius, self.size_multiple, self.reads_whole_frame = 8, 4, False

    def run(self, batch):
        self.last_ms = self.ms[self.runs % len(self.ms)]
        self.clock.t += self.last_ms / 1000.0
        self.runs += 1
        return batch

    def warm_up(self, shape):
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
    choice = PrecisionChoice(engines, repeats=5, clock=clock)
    choice.warm_up((1, 3, 48, 64))
    assert choice.precision == expected
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
    choice = PrecisionChoice({"fp32": fp32, "int8": FakeEngine(clock, [40])}, repeats=5, clock=clock)
    assert choice.choose((1, 3, 8, 8)) == "fp32"


def test_before_the_choice_runs_go_to_fp32():
    clock = FakeClock()
    engines = {"fp32": FakeEngine(clock, [1]), "int8": FakeEngine(clock, [1])}
    choice = PrecisionChoice(engines, clock=clock)
    choice.run(np.zeros((1, 3, 8, 8), np.float32))
    assert (engines["fp32"].runs, engines["int8"].runs) == (1, 0)


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
    assert isinstance(engine, PrecisionChoice) and set(engine.engines) == {"fp32", "int8"}
    engine.warm_up((1, 3, 32, 48))
    assert engine.precision in ("fp32", "int8") and engine.info.path == engine.engines[engine.precision].info.path
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
    assert isinstance(open_engine(fp32_model, "auto", device="cpu"), PrecisionChoice)


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
    (line,) = [ln for ln in err.splitlines() if "auto precision" in ln]
    assert "fp32" in line and "int8" in line and line.count(" ms") == 2
    assert line.endswith("-> fp32") or line.endswith("-> int8")


def test_bench_times_both_precisions(capsys, fp32_model):
    build_test_model(int8_sibling(fp32_model), seed=1)
    assert main(["bench", "--model", str(fp32_model), "--threads", "1", "--sizes", "64x48",
                 "--seconds", "0", "--tile", "32"]) == 0
    header = capsys.readouterr().out.splitlines()[1]
    assert "model whole fp32" in header and "model whole int8" in header
