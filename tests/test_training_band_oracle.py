"""training.band_oracle: the least-squares gains it reports are the ones that fit, and the
student's own gains and offsets are read from the student, not estimated."""
import json

import cv2
import numpy as np
import pytest
import torch

from models import build_student
from training import band_oracle
from training.errors import UsageError
from training.quality import PSNR_CAP


def test_least_squares_gains_recover_the_gains_that_made_the_target():
    rng = np.random.default_rng(0)
    gains = np.array([1.3, -0.4])
    pairs, stacks = [], []
    for _ in range(3):
        start = rng.random((20, 24, 3))
        stack = rng.normal(size=(2, 20, 24))
        pairs.append((start, start + np.tensordot(gains, stack, axes=1)[..., None]))
        stacks.append(stack)
    np.testing.assert_allclose(band_oracle.least_squares_gains(pairs, stacks), gains, atol=1e-9)


def constant_gain_student(bias):
    """A realtime student whose gain maps are `bias` everywhere: its head's weights start at
    zero, so the head's bias is all it predicts."""
    model = build_student("realtime").eval()
    with torch.no_grad():
        model.head.bias.copy_(torch.tensor(bias))
    return model


def test_oracle_row_reads_the_students_gains_and_fits_what_is_left():
    bias = [0.25, -0.1]
    model = constant_gain_student(bias)
    student = band_oracle.BandStudent(model)
    rng = np.random.default_rng(1)
    made_with = np.array([0.8, 0.3])
    pairs = []
    for _ in range(2):
        # A soft texture on 8-bit levels, so rounding it as a camera frame changes nothing.
        texture = cv2.resize(rng.random((8, 8, 3)), (64, 64), interpolation=cv2.INTER_CUBIC)
        frame = np.round((0.4 + 0.2 * texture) * 255) / 255
        _, stack, _ = student(frame.astype(np.float32))
        sharp = frame + np.tensordot(made_with, stack, axes=1)[..., None]
        assert 0 < sharp.min() and sharp.max() < 1  # no clipping to hide a wrong gain
        pairs.append((frame, sharp))
    row = band_oracle.oracle_row(student, pairs)
    np.testing.assert_allclose(row["fixed_gains"], made_with, atol=1e-4)
    assert row["fixed"] > 80
    np.testing.assert_allclose(row["student_gain_mean"], bias, atol=1e-6)
    np.testing.assert_allclose(row["student_gain_spread"], [0, 0], atol=1e-6)
    np.testing.assert_allclose(row["offset_gains"], made_with - np.array(bias), atol=1e-4)
    assert row["student_plus_offset"] > 80 > row["student"]


def test_the_command_reports_every_row_asked_for(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(2)
    for i in range(4):
        image = cv2.resize(rng.random((12, 16, 3)), (80, 60), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(folder / f"photo{i}.png"), np.round(np.clip(image, 0, 1) * 255).astype(np.uint8))
    report = band_oracle.main(["--data", str(folder), "--rows", "gaussian_mild", "jpeg_mild",
                               "--max-images", "1", "--out", str(tmp_path / "out")])
    assert list(report["rows"]) == ["gaussian_mild", "jpeg_mild"]
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["rows"].keys() == report["rows"].keys()
    for row in saved["rows"].values():
        # The fixed gains include zero, and clipping only moves pixels towards the sharp
        # photo: with one held-out photo the oracle is never below its input.
        assert row["fixed"] >= row["input"] - 1e-9 or row["input"] == PSNR_CAP
    assert "gaussian_mild" in (tmp_path / "out" / "report.md").read_text()


def test_a_pixel_painting_student_is_refused_with_one_line():
    with pytest.raises(UsageError, match="band-gain student"):
        band_oracle.BandStudent(build_student("pixels"))
