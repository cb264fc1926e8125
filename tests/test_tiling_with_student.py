"""Tiled inference with the real student architecture, exported by training.export: the
receptive radius the exporter declares must make sharpcam's tiles seamless."""

import numpy as np
import pytest
import torch

from models import build_student
from sharpcam.engine import Engine
from sharpcam.sharpen import Sharpener
from sharpcam.tiling import Tiler
from training.export import export_student


def randomised(model):
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():  # far from the identity, so every layer matters
            p.copy_(torch.randn(p.shape, generator=generator) * 0.08)
    return model


def exported_engine(model, directory) -> Engine:
    path = directory / "student.onnx"
    export_student(model, path)
    return Engine(str(path), device="cpu", threads=2)


# Every preset's local path; the frame context (which no tile can see) is off here.
@pytest.fixture(scope="module", params=["realtime", "pixels"])
def student_engine(request, tmp_path_factory):
    return exported_engine(randomised(build_student(request.param, frame_context=False, block_edges=False)),
                           tmp_path_factory.mktemp("student"))


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


def test_a_student_that_reads_the_whole_frame_never_runs_tiled(tmp_path):
    model = randomised(build_student("realtime", frame_context=True))
    with torch.no_grad():
        model.context.conv2.weight.mul_(30)  # a context as strong as trained ones, not a whisper
    engine = exported_engine(model, tmp_path)
    assert engine.reads_whole_frame
    h, w = 300, 520
    frame = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    # Why: tiles would each see their own average, and the output would change.
    whole, tiled = (Tiler(h, w, tile=tile, receptive_radius=engine.receptive_radius,
                          size_multiple=engine.size_multiple) for tile in (0, 256))
    difference = np.abs(whole.from_batch(engine.run(whole.to_batch(frame)))
                        - tiled.from_batch(engine.run(tiled.to_batch(frame)))).max()
    assert difference > 1e-4  # local students' tiles agree to float rounding (~1e-7)
    auto = Sharpener(engine, tile=None)
    assert auto.tiler(h, w).tile == 0 and auto.choice_note == ""  # nothing measured
    with pytest.raises(ValueError, match="reads the whole frame"):
        Sharpener(engine, tile=256).tiler(h, w)
