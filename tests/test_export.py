"""ONNX export: the contract sharpcam relies on, self-verification, and the command line."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from models import build_student, save_checkpoint
from training import export
from training.export import ExportError, export_student


def trained_looking(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    return model.eval()


@pytest.fixture(scope="module", params=["realtime", "pixels"])
def realtime_onnx(request, tmp_path_factory):
    model = trained_looking(build_student(request.param))
    path = tmp_path_factory.mktemp("export") / "student.onnx"
    error = export_student(model, path, meta={"steps": 7})
    return model, path, error


def test_contract_inputs_outputs_and_metadata(realtime_onnx):
    model, path, error = realtime_onnx
    assert error <= 1e-4
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert inp.name == "image" and inp.type == "tensor(float)"
    assert out.name == "sharpened" and out.type == "tensor(float)"
    assert inp.shape[1] == 3 and all(isinstance(d, str) for d in (inp.shape[0], *inp.shape[2:]))
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["sharpcam.preset"] == model.config["preset"]
    assert json.loads(meta["sharpcam.config"]) == model.config
    assert json.loads(meta["sharpcam.training"]) == {"steps": 7}
    assert int(meta["sharpcam.receptive_radius"]) == model.receptive_radius
    assert int(meta["sharpcam.size_multiple"]) == model.size_multiple
    assert meta["sharpcam.reads_whole_frame"] == ("1" if model.reads_whole_frame else "0")


def test_a_1x1_stem_exports_without_a_full_resolution_unshuffle(realtime_onnx):
    """The unshuffle copies the whole frame once more (a tenth of the 720p time on a CPU);
    a 1×1 stem (realtime) exports as one strided convolution instead, a 3×3 one (pixels)
    keeps its SpaceToDepth."""
    model, path, _ = realtime_onnx
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert ("SpaceToDepth" in ops) == (model.config["stem_kernel"] != 1)


# 736×1280: the canvas sharpcam pads a 720p frame to for a size multiple of 32.
@pytest.mark.parametrize("shape", [(1, 3, 736, 1280), (3, 3, 256, 256), (1, 3, 96, 160)])
def test_onnx_matches_torch_at_sizes_other_than_the_export_size(realtime_onnx, shape):
    model, path, _ = realtime_onnx
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    (got,) = session.run(None, {"image": x})
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert got.shape == shape
    assert np.abs(got - expected).max() <= 1e-4


def test_a_student_with_a_noise_floor_exports_within_parity(tmp_path):
    """The soft minimum over the frame's cells, in ONNX as in PyTorch, at a size other
    than the export's."""
    model = trained_looking(build_student("realtime", noise_floor=True))
    path = tmp_path / "student.onnx"
    assert export_student(model, path) <= 1e-4
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(2).random((1, 3, 96, 160), dtype=np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert np.abs(session.run(None, {"image": x})[0] - expected).max() <= 1e-4


def test_output_is_the_image_not_the_residual(tmp_path):
    path = tmp_path / "identity.onnx"
    export_student(build_student("realtime"), path)  # untrained: exactly the identity
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).random((1, 3, 64, 96), dtype=np.float32)
    np.testing.assert_allclose(session.run(None, {"image": x})[0], x, atol=1e-6)


class DiffersWhenExported(nn.Module):
    """Stands in for an exporter bug: the graph computes something else than torch."""
    arch = "residual_unet"
    config = {"preset": "broken"}
    receptive_radius = 0
    size_multiple = 1
    reads_whole_frame = False

    def forward(self, image):
        return image + 0.01 if torch.onnx.is_in_onnx_export() else image


def test_parity_failure_writes_nothing(tmp_path):
    with pytest.raises(ExportError, match="differs from torch"):
        export_student(DiffersWhenExported(), tmp_path / "broken.onnx")
    assert list(tmp_path.iterdir()) == []


def test_command_line_exports_a_checkpoint(tmp_path, capsys):
    model = trained_looking(build_student("realtime"))
    ckpt = save_checkpoint(tmp_path / "student.pt", arch=model.arch, config=model.config,
                           state_dict=model.state_dict(), meta={"epochs": 1})
    out = tmp_path / "out" / "student.onnx"
    export.main([str(ckpt), "-o", str(out)])
    assert "wrote" in capsys.readouterr().out and out.is_file()
    meta = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).get_modelmeta()
    assert json.loads(meta.custom_metadata_map["sharpcam.training"]) == {"epochs": 1}


def test_command_line_names_a_bad_checkpoint_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "student.pt"
    bad.write_text("not a checkpoint")
    with pytest.raises(SystemExit) as stop:  # a string exit code: Python prints it alone, no traceback
        export.main([str(bad)])
    message = str(stop.value.code)
    assert "\n" not in message and "not a PyTorch checkpoint" in message
    assert not (tmp_path / "student.onnx").exists()


def test_an_exported_student_reads_back_even_with_equal_tensors(tmp_path):
    """An untrained student's zero biases are equal tensors, which the exporter stores once
    and names again through Identity nodes; reading the file back must find them all."""
    from models import load_student
    model = build_student("realtime").eval()
    path = tmp_path / "untrained.onnx"
    export_student(model, path)
    assert any(n.op_type == "Identity" and n.output[0].endswith(".bias") for n in onnx.load(path).graph.node)
    loaded = load_student(path)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor)
