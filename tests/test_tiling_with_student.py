"""Tiled inference with the real student architecture, exported by training.export: the
receptive radius the exporter declares must make sharpcam's tiles seamless."""

import numpy as np
import pytest
import torch

from models import build_student
from sharpcam.engine import Engine
from sharpcam.tiling import Tiler
from training.export import export_student


@pytest.fixture(scope="module", params=["realtime", "pixels"])
def student_engine(request, tmp_path_factory):
    model = build_student(request.param)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():  # far from the identity, so every layer matters
            p.copy_(torch.randn(p.shape, generator=generator) * 0.08)
    path = tmp_path_factory.mktemp("student") / "student.onnx"
    export_student(model, path)
    return Engine(str(path), device="cpu", threads=2)


@pytest.mark.parametrize("h,w", [(241, 397), (720, 1280)])
def test_tiles_of_the_student_reassemble_exactly(student_engine, h, w):
    frame = np.random.default_rng(h).integers(0, 256, (h, w, 3), dtype=np.uint8)
    outputs = []
    for tile in (0, 256):
        tiler = Tiler(h, w, tile=tile, receptive_radius=student_engine.receptive_radius,
                      size_multiple=student_engine.size_multiple)
        outputs.append(tiler.from_batch(student_engine.run(tiler.to_batch(frame))).copy())
    whole, tiled = outputs
    assert np.abs(whole - tiled).max() <= 1 / 255
    assert np.abs(whole - frame[..., ::-1].transpose(2, 0, 1) / 255).max() > 0.05  # not the identity
