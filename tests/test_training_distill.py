"""Distillation and teacher training on a handful of tiny images, in-process (seconds each)."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from models import RESTORMER_PRESETS, Restormer, load_student, load_restormer
from models.checkpoint import load_checkpoint, save_checkpoint
from training import data as datasets
from training import distill, teacher, teacher_cache


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Two OpenMP threads on a 2-core CI box stall whenever anything else runs there;
    # one thread keeps these tests' timing steady.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def textured_image(rng, size=96):
    blocks = rng.random((size // 8, size // 8, 3))
    img = cv2.resize(blocks, (size, size), interpolation=cv2.INTER_NEAREST)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)  # flat patches, hard edges: easy to learn


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sharp")
    rng = np.random.default_rng(0)
    for i in range(6):
        cv2.imwrite(str(folder / f"photo{i}.png"), textured_image(rng))
    return folder


def write_teacher(path: Path, seed=0) -> Path:
    torch.manual_seed(seed)
    model = Restormer(**RESTORMER_PRESETS["tiny"])
    torch.nn.init.normal_(model.output.weight, std=1e-3)  # near the identity, like a trained teacher
    save_checkpoint(path, arch=model.arch, config=model.config, state_dict=model.state_dict())
    return path


@pytest.fixture(scope="session")
def teacher_file(tmp_path_factory):
    return write_teacher(tmp_path_factory.mktemp("teacher") / "teacher.pt")


def distill_args(image_dir, teacher_file, out, *extra):
    return ["--data", str(image_dir), "--teacher", str(teacher_file), "--out", str(out), "--crop", "64",
            "--batch-size", "2", "--crops-per-image", "4", "--device", "cpu", "--log-every", "1", *extra]


def train_records(out):
    return [json.loads(l) for l in (Path(out) / "log.jsonl").read_text().splitlines()
            if json.loads(l)["kind"] == "train"]


def test_distill_lowers_loss_and_writes_checkpoint_and_parity_checked_onnx(image_dir, teacher_file, tmp_path,
                                                                           capsys):
    out = tmp_path / "run"
    cache = tmp_path / "cache"
    # A fixed pool of 8 cached crops, revisited: the loss must fall.
    result = distill.main(distill_args(image_dir, teacher_file, out, "--teacher-cache", str(cache),
                                       "--cache-pool", "8", "--max-steps", "40", "--lr", "3e-2", "--epochs", "20",
                                       "--degradation", "seed"))
    assert "teacher cache miss" in capsys.readouterr().err
    losses = [r["loss"] for r in train_records(out)]
    assert len(losses) == 40
    # An epoch is the same 8 crops in another order: compare the first and the last.
    assert np.mean(losses[-4:]) < 0.85 * np.mean(losses[:4])
    for name in ("student.pt", "student.onnx", "metrics.json", "loss.png", "last.pt", "log.jsonl"):
        assert (out / name).is_file(), name
    student = load_student(out / "student.pt")
    assert student.config["preset"] == "realtime"
    assert result["onnx_max_abs_diff"] <= 1e-4
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 40 and metrics["validation"]["final"]["psnr"] > 0
    # What another machine needs to know to make the same weights.
    import cv2
    environment = metrics["environment"]
    assert environment["torch"] == torch.__version__ and environment["opencv"] == cv2.__version__
    assert environment["numpy"] == np.__version__ and isinstance(environment["cpu_vector"], list)

    # Same teacher, data, degradation and seed: the cache is hit, the teacher never re-run.
    def no_rebuild(*a, **k):
        raise AssertionError("the cache should have been hit")
    orig = teacher_cache.build_pool
    teacher_cache.build_pool = no_rebuild
    try:
        distill.main(distill_args(image_dir, teacher_file, tmp_path / "run2", "--teacher-cache", str(cache),
                                  "--cache-pool", "8", "--max-steps", "2", "--degradation", "seed"))
    finally:
        teacher_cache.build_pool = orig
    assert "teacher cache hit" in capsys.readouterr().err
    assert len(list(cache.glob("teacher-*.pt"))) == 1


def test_teacher_cache_key_changes_with_everything_it_depends_on(image_dir, teacher_file, tmp_path):
    source = datasets.load_source(data=str(image_dir))
    base = dict(teacher_path=teacher_file, data=source.describe, degradation="webcam", crop=64, resize=None,
                seed=0, pool=8)
    key = teacher_cache.cache_key(**base)
    assert teacher_cache.cache_key(**base) == key
    other_teacher = write_teacher(tmp_path / "other.pt", seed=1)
    changed = [dict(base, teacher_path=other_teacher), dict(base, degradation="seed"), dict(base, seed=1),
               dict(base, crop=128), dict(base, pool=16), dict(base, ensemble=True),
               dict(base, data=datasets.load_source(data=str(image_dir), val_fraction=0.5).describe)]
    keys = {teacher_cache.cache_key(**c) for c in changed}
    assert key not in keys and len(keys) == len(changed)
    # A damaged cache file is a miss, not a crash.
    path = teacher_cache.cache_path(tmp_path, key)
    path.write_bytes(b"garbage")
    assert teacher_cache.load_pool(path) is None


def test_unpaired_mode_reads_only_the_frames_and_uses_teacher_labels_only(image_dir, teacher_file, tmp_path,
                                                                          monkeypatch):
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(3)
    for i in range(4):
        cv2.imwrite(str(frames / f"frame{i}.jpg"), textured_image(rng))
    read = []
    real_read = datasets.read_image
    monkeypatch.setattr(datasets, "read_image", lambda p: read.append(Path(p)) or real_read(p))
    out = tmp_path / "run"
    result = distill.main(["--unpaired", str(frames), "--teacher", str(teacher_file), "--out", str(out),
                           "--crop", "64", "--batch-size", "2", "--crops-per-image", "2", "--max-steps", "3",
                           "--device", "cpu", "--log-every", "1"])
    assert read and all(p.parent == frames for p in read)
    assert (result["alpha"], result["beta"]) == (0.0, 1.0)
    assert all(r["loss_sharp"] == 0.0 and r["loss"] == pytest.approx(r["loss_teacher"])
               for r in train_records(out))
    assert (out / "student.onnx").is_file()


def test_distill_resume_continues_from_saved_step_with_same_optimizer_state(image_dir, teacher_file, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    common = ["--lr", "1e-3", "--ckpt-every", "100"]
    distill.main(distill_args(image_dir, teacher_file, straight, "--max-steps", "6", *common))
    distill.main(distill_args(image_dir, teacher_file, resumed, "--max-steps", "3", *common))
    half = load_checkpoint(resumed / "last.pt")
    assert half["train_state"]["step"] == 3
    distill.main(distill_args(image_dir, teacher_file, resumed, "--max-steps", "6", "--resume", *common))
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(resumed / "last.pt")
    assert b["train_state"]["step"] == 6
    for k in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], rtol=1e-5, atol=1e-6)
    opt_a, opt_b = a["train_state"]["optimizer"]["state"], b["train_state"]["optimizer"]["state"]
    assert opt_a.keys() == opt_b.keys()
    for k in opt_a:
        assert int(opt_a[k]["step"]) == int(opt_b[k]["step"]) == 6
        torch.testing.assert_close(opt_a[k]["exp_avg_sq"], opt_b[k]["exp_avg_sq"], rtol=1e-4, atol=1e-9)
    steps = [r["step"] for r in train_records(resumed)]
    assert steps == sorted(set(steps)) and steps[-1] == 6


def test_missing_or_bad_teacher_is_one_clear_line(image_dir, tmp_path):
    with pytest.raises(SystemExit, match="swz30/Restormer.*python -m training.teacher"):
        distill.main(["--data", str(image_dir), "--teacher", str(tmp_path / "none.pth"), "--out", str(tmp_path)])
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match="error: .*bad.pth"):
        distill.main(["--data", str(image_dir), "--teacher", str(bad), "--out", str(tmp_path)])


def teacher_args(image_dir, out, *extra):
    return ["--preset", "tiny", "--data", str(image_dir), "--out", str(out), "--crop", "32", "--batch-size", "2",
            "--crops-per-image", "2", "--device", "cpu", "--steps", "20", "--warmup", "2", "--eval-every", "100",
            "--ckpt-every", "100", "--log-every", "1", *extra]


def test_teacher_trains_resumes_exactly_and_loads_as_teacher(image_dir, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    teacher.main(teacher_args(image_dir, straight, "--max-steps", "4"))
    teacher.main(teacher_args(image_dir, resumed, "--max-steps", "2"))
    teacher.main(teacher_args(image_dir, resumed, "--max-steps", "4", "--resume"))
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(resumed / "last.pt")
    assert a["train_state"]["step"] == b["train_state"]["step"] == 4
    assert a["train_state"]["scheduler"]["last_epoch"] == b["train_state"]["scheduler"]["last_epoch"]
    for k in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], rtol=1e-5, atol=1e-6)
    model = load_restormer(straight / "teacher.pt")
    assert model.config == Restormer(**RESTORMER_PRESETS["tiny"]).config
    assert json.loads((straight / "metrics.json").read_text())["steps"] == 4


def test_teacher_trains_each_progressive_stage_on_its_own_patch_and_batch(image_dir, tmp_path):
    # --crop 32, batch 2: the 16×16 stage takes 8 crops a batch, so pixels per batch stay the same.
    teacher.main(teacher_args(image_dir, tmp_path / "run", "--progressive", "16", "32", "--steps", "4"))
    trained = [(r["step"], r["crop"], r["batch"]) for r in train_records(tmp_path / "run")]
    assert trained == [(1, 16, 8), (2, 16, 8), (3, 32, 2), (4, 32, 2)]


class KeyDataset(torch.utils.data.Dataset):
    def __len__(self):
        return 12

    def __getitem__(self, key):
        return (torch.tensor(key),)


def test_ddp_ranks_draw_disjoint_shares_and_resume_mid_epoch():
    from training import distributed, loop
    stage = loop.Stage(first_step=0, end_step=3, dataset=KeyDataset(), batch_size=2, seed=0, workers=0)

    def keys(rank, step=0):
        runtime = distributed.Runtime(torch.device("cpu"), rank=rank, world=2)
        return [int(k) for (batch,) in loop.stage_loader(stage, step, runtime, runtime.device) for k in batch]
    first, second = keys(0), keys(1)
    assert len(first) == len(second) == 6 and not set(first) & set(second)
    assert keys(1, step=1) == second[2:]  # resuming after one step skips exactly that batch


def test_teacher_progressive_stages_and_schedule():
    opts = teacher.Options(steps=200, progressive=[32, 64], crop=64, batch_size=4, warmup=10)
    assert teacher.stages(opts) == [(0, 32, 16), (100, 64, 4)]
    assert teacher.lr_factor(0, opts) == pytest.approx(0.1)
    assert teacher.lr_factor(9, opts) == pytest.approx(1.0)
    assert teacher.lr_factor(200, opts) == pytest.approx(opts.min_lr / opts.lr)


def test_interrupted_distillation_saves_a_resumable_checkpoint(image_dir, teacher_file, tmp_path, monkeypatch):
    from training import distributed
    calls = {"n": 0}

    def requested(self):
        calls["n"] += 1
        return calls["n"] > 2  # Ctrl-C arrives during the third step
    monkeypatch.setattr(distributed.StopRequest, "requested", requested)
    out = tmp_path / "run"
    with pytest.raises(SystemExit, match="stopped at step 2.*--resume"):
        distill.main(distill_args(image_dir, teacher_file, out, "--max-steps", "5"))
    assert load_checkpoint(out / "last.pt")["train_state"]["step"] == 2
    monkeypatch.undo()
    distill.main(distill_args(image_dir, teacher_file, out, "--max-steps", "5", "--resume"))
    assert load_checkpoint(out / "last.pt")["train_state"]["step"] == 5


def test_teacher_fine_tunes_from_released_layout_weights(image_dir, tmp_path):
    torch.manual_seed(0)
    model = Restormer(**RESTORMER_PRESETS["tiny"])
    released = tmp_path / "motion_deblurring.pth"
    torch.save({"params": model.state_dict()}, released)  # the layout of the released files
    out = tmp_path / "ft"
    teacher.main(teacher_args(image_dir, out, "--init", str(released), "--max-steps", "1"))
    tuned = load_restormer(out / "teacher.pt")
    assert tuned.config == model.config
    with pytest.raises(SystemExit, match="error: --init"):
        bad = tmp_path / "bad.pth"
        bad.write_bytes(b"junk")
        teacher.main(teacher_args(image_dir, tmp_path / "x", "--init", str(bad), "--max-steps", "1"))


def test_distill_on_paired_folders_with_original_resize_protocol(teacher_file, tmp_path):
    rng = np.random.default_rng(5)
    for i in range(5):
        sharp = textured_image(rng, 80)
        cv2.imwrite(str((tmp_path / "sharp").mkdir(exist_ok=True) or tmp_path / "sharp" / f"{i:04d}.png"), sharp)
        blurred = cv2.GaussianBlur(sharp, (0, 0), 0.5)
        cv2.imwrite(str((tmp_path / "blur").mkdir(exist_ok=True) or tmp_path / "blur" / f"{i:04d}.png"), blurred)
    result = distill.main(["--paired", str(tmp_path / "blur"), str(tmp_path / "sharp"), "--resize", "64",
                           "--crop", "64", "--teacher", str(teacher_file), "--out", str(tmp_path / "run"),
                           "--batch-size", "2", "--max-steps", "2", "--device", "cpu"])
    assert result["data"]["kind"] == "paired" and result["data"]["val_files"] >= 1
    assert result["validation"]["baseline"]["input_psnr"] > 30  # σ 0.5 blur: the input is already close


def test_ground_truth_only_runs_the_teacher_for_the_validation_baseline_alone(
        image_dir, teacher_file, tmp_path, monkeypatch):
    calls = []
    original = distill.load_teacher

    def counting_teacher(path, device):
        model, resolved = original(path, device)
        model.register_forward_hook(lambda *args: calls.append(1))
        return model, resolved

    monkeypatch.setattr(distill, "load_teacher", counting_teacher)
    distill.main(distill_args(image_dir, teacher_file, tmp_path / "run", "--alpha", "1", "--beta", "0",
                              "--max-steps", "4"))
    assert len(calls) == 1  # the held-out baseline, once; no training batch
    assert all(r["loss_teacher"] == 0.0 for r in train_records(tmp_path / "run"))


def test_ground_truth_only_needs_no_teacher_and_follows_the_cosine_schedule(image_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no checkpoints/motion_deblurring.pth here
    out = tmp_path / "run"
    result = distill.main(["--data", str(image_dir), "--out", str(out), "--crop", "64", "--batch-size", "2",
                           "--device", "cpu", "--log-every", "1", "--alpha", "1", "--beta", "0",
                           "--pool", "12", "--max-steps", "10", "--epochs", "10", "--lr", "1e-3",
                           "--schedule", "cosine", "--warmup", "3", "--min-lr", "1e-5", "--grad-clip", "0.5"])
    assert (out / "student.onnx").is_file() and result["teacher"] is None
    lrs = [r["lr"] for r in train_records(out)]  # the rate for the step after each logged one
    peak = lrs.index(max(lrs))
    assert lrs[:peak + 1] == sorted(lrs[:peak + 1]) and lrs[peak:] == sorted(lrs[peak:], reverse=True)
    assert max(lrs) == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-5)


def test_lr_factor_warms_up_then_falls_to_the_floor():
    opts = distill.Options(lr=1e-3, min_lr=1e-5, schedule="cosine", warmup=4)
    assert distill.lr_factor(0, 100, opts) == pytest.approx(0.25)
    assert distill.lr_factor(3, 100, opts) == pytest.approx(1.0)
    assert distill.lr_factor(52, 100, opts) == pytest.approx(0.505, abs=1e-3)
    assert distill.lr_factor(100, 100, opts) == pytest.approx(0.01)
    assert distill.lr_factor(57, 100, distill.Options(schedule="constant")) == 1.0


def test_student_config_overrides_reach_the_model_and_bad_json_is_one_line(image_dir, tmp_path):
    args = ["--data", str(image_dir), "--out", str(tmp_path / "o"), "--crop", "64", "--batch-size", "2",
            "--device", "cpu", "--beta", "0", "--max-steps", "1"]
    distill.main([*args, "--student-config", '{"widths": [8, 16, 32]}'])
    assert load_student(tmp_path / "o" / "student.pt").config["widths"] == [8, 16, 32]
    with pytest.raises(SystemExit, match="--student-config is not JSON"):
        distill.main([*args, "--student-config", "{widths: 8}"])
    with pytest.raises(SystemExit, match="--student-config: .*odd"):
        distill.main([*args, "--student-config", '{"bands": [4]}'])


def test_crop_pool_degrades_once_and_flips_afresh_per_key(image_dir, monkeypatch):
    source = datasets.load_source(data=str(image_dir))
    pairs = datasets.train_dataset(source, crop=32, degradation="webcam", seed=3, crops_per_image=1)
    pool = datasets.CropPool.build(pairs, 6, seed=3)
    assert all(part.dtype == torch.uint8 and part.shape == (6, 3, 32, 32) for part in pool.parts)
    # Keys past the dataset's length are fresh crops, not repeats of the first ones.
    assert not torch.equal(pool.parts[1][0], pool.parts[1][len(pairs)])
    monkeypatch.setattr(pairs, "degrade", lambda *a: (_ for _ in ()).throw(AssertionError("degraded again")))
    first, again = pool[2], pool[2]
    for a, b in zip(first, again):
        assert torch.equal(a, b)  # a key is the same sample every time (resumable runs)
    views = [pool[2 + 6 * epoch][1] for epoch in range(8)]  # the same crop in later epochs
    assert len({v.numpy().tobytes() for v in views}) > 1  # seen flipped/rotated differently
    for v in views:
        assert torch.equal(v.flatten().sort().values, first[1].flatten().sort().values)
        assert v.dtype == torch.float32 and 0 <= v.min() and v.max() <= 1


def test_init_from_the_shipped_onnx_reproduces_its_outputs_before_any_step(image_dir, tmp_path):
    import onnxruntime as ort
    from sharpcam import DEFAULT_MODEL
    photo = datasets.to_tensor(cv2.cvtColor(cv2.imread(str(next(image_dir.glob("*.png")))),
                                            cv2.COLOR_BGR2RGB).astype(np.float32) / 255)[None].numpy()

    def run(path):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {"image": photo})[0]
    shipped = run(DEFAULT_MODEL)
    torch_out = load_student(DEFAULT_MODEL)(torch.from_numpy(photo)).detach().numpy()
    np.testing.assert_allclose(torch_out, shipped, atol=1e-5)
    # A learning rate of 0 leaves the weights as they were: the fine-tune's export is the shipped model.
    distill.main(["--data", str(image_dir), "--out", str(tmp_path / "o"), "--crop", "64", "--batch-size", "2",
                  "--device", "cpu", "--beta", "0", "--max-steps", "1", "--lr", "0", "--init", "shipped"])
    np.testing.assert_allclose(run(tmp_path / "o" / "student.onnx"), shipped, atol=1e-5)
    with pytest.raises(SystemExit, match="error: --init: .*not a SharpCam student"):
        bad = tmp_path / "plain.onnx"
        import conftest
        conftest.nan_model(bad)
        distill.main(["--data", str(image_dir), "--out", str(tmp_path / "x"), "--beta", "0", "--init", str(bad)])


def test_relative_mse_counts_a_mild_crop_as_much_as_a_strong_one():
    from training.loop import Objective
    sharp = torch.full((2, 3, 8, 8), 0.5)
    degraded = sharp.clone()
    degraded[0] += 0.01  # mildly degraded crop
    degraded[1] += 0.10  # strongly degraded crop
    fixes_mild = degraded.clone()
    fixes_mild[0] = sharp[0]  # removes all of the mild crop's 0.01 error
    helps_strong = degraded.clone()
    helps_strong[1] -= 0.01  # the same absolute gain on the strong crop
    cpu = torch.device("cpu")

    def relative(objective, prediction):
        return float(objective.losses(prediction, (degraded, sharp), cpu, False)["loss_relative_mse"])

    def pooled_mse(prediction):
        return float(((prediction - sharp) ** 2).mean())
    balanced = Objective(mse=1.0, mse_floor=0.005)
    # Pooled, squared errors favour the strong crop (0.1² − 0.09² > 0.01²) ...
    assert pooled_mse(degraded) - pooled_mse(helps_strong) > pooled_mse(degraded) - pooled_mse(fixes_mild)
    # ... relative, each crop's error counts relative to its input's: the mild crop's fix
    # is worth most of a crop, a tenth off the strong one's error about a fifth of one.
    gain_mild = relative(balanced, degraded) - relative(balanced, fixes_mild)
    gain_strong = relative(balanced, degraded) - relative(balanced, helps_strong)
    assert gain_mild > 2 * gain_strong
    assert gain_mild == pytest.approx(0.5 * 0.01 ** 2 / (0.01 ** 2 + 0.005 ** 2), rel=1e-4)
    # The term is added to the L1 with its weight, and absent when the weight is 0.
    l1 = float(Objective().losses(fixes_mild, (degraded, sharp), cpu, False)["loss"])
    both = Objective(mse=0.5, mse_floor=0.005).losses(fixes_mild, (degraded, sharp), cpu, False)
    assert float(both["loss"]) == pytest.approx(l1 + 0.5 * float(both["loss_relative_mse"]))
    assert float(Objective().losses(fixes_mild, (degraded, sharp), cpu, False)["loss_relative_mse"]) == 0.0


def test_relative_mse_needs_a_positive_floor(image_dir, tmp_path):
    with pytest.raises(SystemExit, match="--mse-floor 0.0 must be above 0"):
        distill.main(["--data", str(image_dir), "--out", str(tmp_path / "o"), "--crop", "64", "--beta", "0",
                      "--device", "cpu", "--max-steps", "1", "--mse", "0.1", "--mse-floor", "0"])


def test_int8_aware_fine_tuning_trains_through_the_rounding_and_resumes_exactly(image_dir, tmp_path, capsys,
                                                                                 monkeypatch):
    common = ["--data", str(image_dir), "--crop", "64", "--batch-size", "2", "--crops-per-image", "4",
              "--device", "cpu", "--log-every", "1", "--beta", "0", "--init", "shipped", "--lr", "1e-3",
              "--ckpt-every", "100"]
    plain, straight, resumed = tmp_path / "plain", tmp_path / "straight", tmp_path / "resumed"
    distill.main([*common, "--out", str(plain), "--max-steps", "4"])
    distill.main([*common, "--out", str(straight), "--max-steps", "4", "--int8-aware"])
    # The same weights, crops and order: only the simulated rounding changes the loss.
    first_plain, first_aware = train_records(plain)[0], train_records(straight)[0]
    assert first_aware["loss"] != first_plain["loss"]
    assert abs(first_aware["loss"] - first_plain["loss"]) < 0.1 * first_plain["loss"]
    # The ranges are calibrated on the weights the run starts from, also when it resumes.
    distill.main([*common, "--out", str(resumed), "--max-steps", "2", "--int8-aware"])
    distill.main([*common, "--out", str(resumed), "--max-steps", "4", "--int8-aware", "--resume"])
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(resumed / "last.pt")
    for k in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], rtol=1e-5, atol=1e-6)
    # What it writes is the fp32 student, as always: no rounding in the exported graph.
    import onnx
    model = onnx.load(straight / "student.onnx")
    assert not [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["sharpcam.training"])["int8_aware"] is True
    # bf16's own rounding would drown the simulated one: the run says so and stays fp32.
    from training import loop
    asked = []
    real_train = loop.train
    monkeypatch.setattr(loop, "train", lambda *a, **kw: asked.append(kw["bf16"]) or real_train(*a, **kw))
    capsys.readouterr()
    distill.main([*common, "--out", str(tmp_path / "bf16"), "--max-steps", "1", "--int8-aware", "--bf16"])
    distill.main([*common, "--out", str(tmp_path / "bf16-plain"), "--max-steps", "1", "--bf16"])
    assert asked == [False, True]
    assert capsys.readouterr().err.count("--int8-aware trains in fp32 (bf16 off)") == 1


def test_teacher_ensemble_labels_the_cache_with_the_mean_over_flips_and_rotations(image_dir, teacher_file,
                                                                                  tmp_path, capsys):
    from training.teacher_labels import self_ensemble
    cache = tmp_path / "cache"
    distill.main(distill_args(image_dir, teacher_file, tmp_path / "run", "--teacher-cache", str(cache),
                              "--cache-pool", "4", "--max-steps", "1", "--degradation", "seed",
                              "--teacher-ensemble"))
    assert "teacher cache miss" in capsys.readouterr().err
    (path,) = cache.glob("teacher-*.pt")
    pool = teacher_cache.load_pool(path)
    network = load_restormer(teacher_file).eval()
    with torch.no_grad():
        single, ensembled = network(pool["inputs"]).clamp(0, 1), self_ensemble(network, pool["inputs"]).clamp(0, 1)
    assert torch.allclose(pool["teacher"], ensembled, atol=1e-5)
    assert not torch.allclose(pool["teacher"], single, atol=1e-5)  # the tiny teacher is not symmetric


def test_anchored_crops_are_labelled_by_the_anchor_and_the_others_by_the_sharp_photo():
    from training.loop import Objective
    cpu = torch.device("cpu")
    degraded = torch.rand(2, 3, 16, 16)
    sharp = torch.rand(2, 3, 16, 16)

    class Halver(torch.nn.Module):
        def forward(self, x):
            return x / 2
    kept = torch.tensor([1.0, 0.0]).view(2, 1, 1, 1)
    objective = Objective(anchor=Halver())
    # Predicting the anchor's output on crop 0 and the sharp photo on crop 1 costs nothing...
    exact = torch.stack([degraded[0] / 2, sharp[1]])
    assert float(objective.losses(exact, (degraded, sharp, kept), cpu, False)["loss"]) == 0.0
    # ... and the sharp photo on crop 0 is an error the size of its distance to the anchor's output.
    wrong = sharp.clone()
    expected = float((sharp[0] - degraded[0] / 2).abs().mean()) / 2
    assert float(objective.losses(wrong, (degraded, sharp, kept), cpu, False)["loss"]) == pytest.approx(expected)


def test_anchored_fine_tune_builds_both_halves_of_its_pool_and_learns_from_the_corrected_crops(
        image_dir, tmp_path, monkeypatch):
    from sharpcam import DEFAULT_MODEL
    pools = []
    concatenate = datasets.CropPool.concatenate
    monkeypatch.setattr(datasets.CropPool, "concatenate",
                        classmethod(lambda cls, parts, seed=0: pools.append(parts) or concatenate(parts, seed)))
    distill.main(["--data", str(image_dir), "--crop", "64", "--batch-size", "4", "--device", "cpu", "--alpha", "1",
                  "--beta", "0", "--pool", "16", "--max-steps", "6", "--epochs", "10", "--lr", "1e-3",
                  "--init", "shipped", "--anchor", "shipped", "--degradation", "webcam-uncompressed",
                  "--correct", "compressed", "--correct-share", "0.25", "--out", str(tmp_path / "o")])
    kept, corrected = pools[0]
    assert (len(kept), len(corrected)) == (12, 4)
    assert bool((kept.parts[2] == 255).all()) and bool((corrected.parts[2] == 0).all())  # the flag, as uint8
    shipped = load_student(DEFAULT_MODEL).state_dict()
    weights = load_student(tmp_path / "o" / "student.pt").state_dict()
    assert max(float((weights[k] - shipped[k]).abs().max()) for k in shipped) > 1e-4


def test_an_anchored_fine_tune_can_correct_on_fresh_text_pages_instead_of_photos(image_dir, tmp_path, monkeypatch):
    from training.text_pages import text_crop
    pools = []
    concatenate = datasets.CropPool.concatenate
    monkeypatch.setattr(datasets.CropPool, "concatenate",
                        classmethod(lambda cls, parts, seed=0: pools.append(parts) or concatenate(parts, seed)))
    distill.main(["--data", str(image_dir), "--crop", "64", "--batch-size", "4", "--device", "cpu", "--alpha", "1",
                  "--beta", "0", "--pool", "8", "--max-steps", "2", "--epochs", "10", "--lr", "1e-3", "--seed", "3",
                  "--init", "shipped", "--anchor", "shipped", "--degradation", "webcam", "--correct", "seed",
                  "--correct-source", "text-pages", "--correct-share", "0.25", "--out", str(tmp_path / "o")])
    kept, corrected = pools[0]
    assert (len(kept), len(corrected)) == (6, 2)
    # The corrected crops' sharp halves are the text pages drawn for keys 0 and 1 (seed + 1).
    for key in range(2):
        page = datasets.to_tensor(text_crop(64, datasets.sample_rng(4, key)))
        assert torch.equal(corrected.parts[1][key], page.mul(255).round().clamp(0, 255).to(torch.uint8))


@pytest.mark.parametrize("args, message", [
    (["--anchor", "shipped", "--correct", "compressed"], "--anchor fine-tunes on pooled crops"),
    (["--anchor", "shipped", "--pool", "8"], "--anchor needs --correct"),
    (["--correct", "compressed", "--pool", "8"], "--correct only applies beside --anchor"),
    (["--anchor", "shipped", "--correct", "compressed", "--pool", "8", "--correct-share", "1"],
     "--correct-share 1.0 must be between 0 and 1"),
    (["--anchor", "shipped", "--correct", "compressed", "--pool", "8", "--correct-share", "0.01"],
     "leaves one side without crops"),
    (["--correct-source", "text-pages", "--pool", "8"], "--correct-source text-pages only applies beside --anchor"),
    (["--contrast", "0", "1"], "--contrast 0 1 must be two factors with 0 < LOW <= HIGH"),
    (["--contrast", "1", "0.5"], "--contrast 1 0.5 must be two factors"),
    (["--photo-scale", "0.5", "2"], "--photo-scale 0.5 2 must be two scales with 0 < LOW <= HIGH <= 1"),
    (["--photo-scale", "0", "1"], "--photo-scale 0 1 must be two scales"),
])
def test_anchored_fine_tune_options_are_checked_in_one_line(image_dir, tmp_path, args, message):
    with pytest.raises(SystemExit, match=message):
        distill.main(["--data", str(image_dir), "--out", str(tmp_path / "o"), "--crop", "64", "--beta", "0",
                      "--device", "cpu", "--max-steps", "1", *args])
