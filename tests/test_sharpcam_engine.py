"""The engine loads models that meet the contract and refuses the others clearly."""
import numpy as np
import pytest

from conftest import build_test_model
from sharpcam.engine import Engine, ModelError, choose_providers


def test_engine_reads_contract_metadata(engine):
    assert engine.receptive_radius == 12 and engine.size_multiple == 4
    assert engine.info.arch == "test_unet"
    x = np.random.default_rng(0).random((2, 3, 32, 48), dtype=np.float32)
    y = engine.run(x)
    assert y.shape == x.shape and y.dtype == np.float32
    assert engine.last_ms > 0


def test_missing_model_file(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        Engine(tmp_path / "nope.onnx")


def test_corrupt_model_file(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf" * 10)
    with pytest.raises(ModelError, match="cannot load model"):
        Engine(bad)


def test_missing_metadata_is_a_contract_violation(tmp_path):
    path = build_test_model(tmp_path / "bare.onnx", metadata=False)
    with pytest.raises(ModelError, match="receptive_radius"):
        Engine(path)
    eng = Engine(path, receptive_radius=12, size_multiple=4)  # foreign-model override
    assert eng.receptive_radius == 12


def test_whole_frame_flag_is_read_and_checked(tmp_path):
    assert Engine(build_test_model(tmp_path / "framed.onnx", reads_whole_frame=1)).reads_whole_frame
    assert not Engine(build_test_model(tmp_path / "local.onnx")).reads_whole_frame  # older exports
    with pytest.raises(ModelError, match="reads_whole_frame"):
        Engine(build_test_model(tmp_path / "odd.onnx", reads_whole_frame="yes"))


def test_size_multiple_above_32_is_refused(tmp_path):
    path = build_test_model(tmp_path / "m64.onnx", size_multiple=64)
    with pytest.raises(ModelError, match="size_multiple"):
        Engine(path)


def test_provider_choice():
    assert choose_providers("cpu", ["CUDAExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert choose_providers("auto", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert choose_providers("auto", ["CPUExecutionProvider", "OpenVINOExecutionProvider", "DmlExecutionProvider"]) == [
        "DmlExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(ModelError, match="--device cpu"):
        choose_providers("gpu", ["CPUExecutionProvider"])


@pytest.mark.parametrize("cores,expected", [(1, 1), (2, 2), (3, 3), (4, 3), (6, 4), (16, 4), (None, 1)])
def test_default_threads_leave_a_core_to_the_call_app(cores, expected, monkeypatch):
    import os
    from sharpcam.engine import default_threads
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    assert default_threads() == expected


def test_engine_without_threads_uses_the_default(test_model, monkeypatch):
    import os
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    eng = Engine(test_model, device="cpu")
    assert eng.threads == 4 and "4 threads" in eng.describe()
