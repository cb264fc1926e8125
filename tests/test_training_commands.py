"""The training commands as a user runs them: subprocess CLIs, DDP under torchrun, evaluation."""
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from models import build_student
from training import distill, evaluate
from training.quality import PSNR_CAP

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, timeout=180):
    # One OpenMP thread: steady timing on a shared 2-core runner.
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(1)
    for i in range(7):
        blocks = rng.random((12, 12, 3))
        img = cv2.resize(blocks, (96, 96), interpolation=cv2.INTER_NEAREST)
        cv2.imwrite(str(folder / f"img{i}.png"), (img * 255).astype(np.uint8))
    return folder


def test_teacher_distill_evaluate_chain_through_the_cli(image_dir, tmp_path):
    t, s, e = tmp_path / "t", tmp_path / "s", tmp_path / "e"
    run_cli("-m", "training.teacher", "--preset", "tiny", "--max-steps", "3", "--out", str(t),
            "--data", str(image_dir), "--crop", "32", "--device", "cpu")
    assert (t / "teacher.pt").is_file() and (t / "metrics.json").is_file()
    run_cli("-m", "training.distill", "--teacher", str(t / "teacher.pt"), "--max-steps", "3", "--out", str(s),
            "--data", str(image_dir), "--crop", "64", "--device", "cpu")
    for name in ("student.pt", "student.onnx", "metrics.json", "loss.png"):
        assert (s / name).is_file(), name
    proc = run_cli("-m", "training.evaluate", "--student", str(s / "student.onnx"), "--teacher",
                   str(t / "teacher.pt"), "--out", str(e), "--data", str(image_dir), "--crop", "64",
                   "--speed-repeats", "1", "--teacher-tile", "32", "--teacher-ensemble")
    report = json.loads((e / "report.json").read_text())
    assert set(report["table"]) == set(evaluate.PRESETS)
    assert {"input", "unsharp", "teacher", "teacher_x8", "student_torch", "student_onnx"} <= set(
        report["table"]["seed"])
    assert "teacher ×8" in (e / "report.md").read_text()
    assert report["speed"]["tile_256_ms"] > 0 and report["speed"]["720p_fps"] > 0
    assert "| preset |" in (e / "report.md").read_text() and "| preset |" in proc.stdout
    assert (e / "grid.png").stat().st_size > 1000


def test_bad_arguments_exit_with_one_clear_line(tmp_path):
    with pytest.raises(SystemExit) as stop:  # a string exit code: Python prints it alone, no traceback
        distill.main(["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--device", "cpu"])
    message = str(stop.value.code)
    assert "\n" not in message and message.startswith("error: image folder")


def test_ddp_ranks_train_on_different_crops_share_one_teacher_cache_and_only_rank0_writes(image_dir, tmp_path,
                                                                                         capsys):
    from models import RESTORMER_PRESETS, Restormer
    from models.checkpoint import save_checkpoint
    model = Restormer(**RESTORMER_PRESETS["tiny"])
    teacher = save_checkpoint(tmp_path / "teacher.pt", arch=model.arch, config=model.config,
                              state_dict=model.state_dict())
    args = ["--teacher", str(teacher), "--data", str(image_dir), "--crop", "64", "--batch-size", "2",
            "--crops-per-image", "2", "--max-steps", "3", "--device", "cpu", "--log-every", "1",
            "--teacher-cache", str(tmp_path / "cache"), "--cache-pool", "8"]
    out = tmp_path / "ddp"
    proc = run_cli("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "training.distill",
                   "--out", str(out), *args)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["last.pt", "student.pt", "student.onnx", "metrics.json", "log.jsonl", "loss.png"])
    records = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    ddp = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in ddp] == [1, 2, 3]  # one writer: no step logged twice
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == 3
    assert proc.stderr.count("wrote ") == 1 and proc.stderr.count("teacher cache miss") == 1
    assert len(list((tmp_path / "cache").iterdir())) == 1

    # One process on the same cache starts from the same first batch as rank 0. The untrained
    # student is the identity, so the first loss depends on the data alone: DDP's loss, the
    # mean over both ranks, equals it only if rank 1 trained on rank 0's crops.
    distill.main(["--out", str(tmp_path / "single"), *args])
    assert "teacher cache hit" in capsys.readouterr().err
    first = json.loads((tmp_path / "single" / "log.jsonl").read_text().splitlines()[0])
    assert first["kind"] == "train" and first["step"] == 1
    assert abs(ddp[0]["loss"] - first["loss"]) > 1e-4


def test_identity_restorer_scores_exactly_the_input():
    rng = np.random.default_rng(0)
    images = [rng.random((80, 90, 3)).astype(np.float32) for _ in range(3)]
    pairs = evaluate.build_pairs(images, 64, evaluate.PRESETS, seed=0)
    table = evaluate.evaluate(pairs, {"identity": evaluate.identity})
    for preset, row in table.items():
        assert row["identity"] == row["input"], preset
    assert table["clean"]["input"]["psnr"] == PSNR_CAP and table["clean"]["input"]["ssim"] == 1.0
    assert table["defocus"]["input"]["psnr"] < 40
    # An untrained realtime student is the identity too (zero-initialised detail head).
    student = build_student("realtime").eval()
    table = evaluate.evaluate({"seed": pairs["seed"]},
                              {"student": evaluate.torch_restorer(student, torch.device("cpu"))})
    assert table["seed"]["student"] == table["seed"]["input"]


def test_report_markdown_has_every_preset_and_baseline():
    row = {m: {"psnr": 30.0, "ssim": 0.9} for m in ("input", "unsharp", "student_onnx")}
    report = dict(images=2, source="test", crop=64, presets={"seed": "σ 0.5"}, table={"seed": row},
                  speed=dict(tile_256_ms=5.0, **{"720p_fps": 20.0, "720p_tiled_256_ms": 60.0,
                                                 "720p_whole_frame_ms": 50.0}), threads=2, notes=["n"])
    md = evaluate.report_markdown(report)
    assert "| seed |" in md and "unsharp mask" in md and "20.0 frames/s" in md


@pytest.mark.parametrize("given,expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_training_commands_make_openmp_threads_wait_passively_by_default(given, expected):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    env["PYTHONPATH"] = str(ROOT)
    # The package runs before any of its commands, and so before any of them imports torch,
    # whose OpenMP runtime reads the policy once, when it loads.
    code = "import sys, training, os; assert 'torch' not in sys.modules; print(os.environ['OMP_WAIT_POLICY'])"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == expected
