"""Distil a Restormer teacher into the Residual UNet student: ``python -m training.distill``.

loss = α · L1(student, sharp) + β · L1(student, teacher(degraded)), the original
project's recipe (α 0.8, β 0.2, Adam lr 1e-4, batch 4, 256×256 crops, 5 epochs), on
sharp photos degraded on the fly (``--data``, or scikit-image's photos by default),
on paired folders (``--paired BLUR SHARP``), or on frames without ground truth
(``--unpaired DIR``: teacher labels only, α 0, β 1).

The teacher runs on every batch on a GPU; on a CPU ``--teacher-cache DIR`` labels a
fixed pool of crops once and reuses it, and ``--pool N`` (ground truth alone) degrades N
crops once, so the loop is compute-bound. The recipe that made the shipped student
(warm-up + cosine schedule, clipping) is in MODEL_CARD.md. ``--int8-aware`` fine-tunes
through a simulation of ``training.quantize``'s INT8 rounding, so the INT8 model that
is made from the result loses less to it. ``--anchor STUDENT --correct PRESET`` fine-tunes
without forgetting: the --degradation crops are labelled by the frozen STUDENT's own
output, the --correct crops by the sharp photo, so only what the latter teach changes
(docs/design_rounds.md, "Eighth round"). Validation PSNR/SSIM on
held-out files each epoch (or ``--eval-every``). Resumable (``--resume``), DDP under ``torchrun``. Writes OUT/student.pt,
OUT/student.onnx (parity checked), OUT/metrics.json, OUT/log.jsonl, OUT/loss.png.
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tqdm import tqdm

from models import CheckpointError, STUDENT_PRESETS, build_student, load_restormer, load_student
from sharpcam import DEFAULT_MODEL
from training import data as datasets
from training import degrade, distributed, loop, teacher_cache
from training.teacher_labels import TeacherLabels
from training.errors import UsageError
from training.export import ExportError, export_student
from training.int8_simulation import Int8Simulation
from training.options import option
from training.schedule import warmup_cosine

DEFAULT_TEACHER = Path("checkpoints/motion_deblurring.pth")
# Crops whose activations set --int8-aware's ranges (training.quantize calibrates on 64).
INT8_CALIBRATION_CROPS = 64
TEACHER_HELP = (
    "get the released Restormer motion-deblurring weights from the Restormer GitHub releases "
    "(swz30/Restormer, Motion_Deblurring/pretrained_models/motion_deblurring.pth) and save them "
    f"as {DEFAULT_TEACHER} or pass --teacher PATH; or train a teacher with "
    "`python -m training.teacher --out runs/teacher` and pass --teacher runs/teacher/teacher.pt")


@dataclass
class Options(loop.LoopOptions):
    """Distil a Restormer teacher into the SharpCam student."""
    out: str = option("runs/distill", "run folder for checkpoints, ONNX, metrics and plots")
    teacher: Optional[str] = option(None, f"teacher weights (released or ours); default {DEFAULT_TEACHER}")
    student: str = option("realtime", "student preset", choices=sorted(STUDENT_PRESETS))
    student_config: Optional[str] = option(None, "JSON overrides of the preset's configuration, "
                                           "e.g. '{\"widths\": [16, 32, 64]}' (design sweeps)")
    init: Optional[str] = option(None, "fine-tune this student instead of starting afresh: a student.pt, a "
                                 "student .onnx, or 'shipped' for the one sharpcam ships; its "
                                 "configuration replaces --student")
    unpaired: Optional[str] = option(None, "frames with no sharp reference: teacher labels only (α 0, β 1)")
    crop: Optional[int] = option(None, "training crop size, multiple of 32 (default: 256 on CUDA, 128 on CPU)")
    pool: int = option(0, "pre-degrade this many crops once and reuse them every epoch, flipped and "
                          "rotated afresh, so a CPU run is compute-bound (0: degrade on the fly)")
    alpha: float = option(0.8, "weight of L1(student, sharp)")
    beta: float = option(0.2, "weight of L1(student, teacher)")
    mse: float = option(0.0, "γ: adds γ · each crop's MSE relative to its input's, so mildly "
                             "degraded crops count as much as strongly degraded ones (0: off)")
    mse_floor: float = option(0.005, "ε of the relative MSE: MSE / (input's MSE + ε²), so crops "
                                     "with almost nothing to fix keep a bounded weight")
    lr: float = option(1e-4, "Adam learning rate (the peak, with --schedule cosine)")
    schedule: str = option("constant", "learning rate: constant (the original recipe) or cosine "
                                       "(linear --warmup, then cosine down to --min-lr)",
                           choices=["constant", "cosine"])
    warmup: int = option(0, "linear warm-up steps (cosine schedule)")
    min_lr: float = option(1e-6, "learning rate at the end of the cosine schedule")
    batch_size: int = option(4, "batch size per process")
    epochs: int = option(5, "epochs over the training crops")
    teacher_ensemble: bool = option(False, "teacher labels are the mean over the 8 flips and rotations "
                                           "of each crop (8× the teacher's time)")
    teacher_cache: Optional[str] = option(None, "folder for precomputed teacher outputs (for CPUs)")
    cache_pool: int = option(256, "number of crops the teacher labels for the cache")
    eval_every: int = option(0, "validate every N steps (0: once per epoch, and at the end)")
    ckpt_every: int = option(200, "write OUT/last.pt every N steps")
    anchor: Optional[str] = option(None, "fine-tune without forgetting: crops of --degradation are labelled "
                                   "by this frozen student's own output (a student.pt, a student .onnx, "
                                   "or 'shipped'), crops of --correct by the sharp photo; needs --pool")
    correct: Optional[str] = option(None, "with --anchor: the degradation preset whose crops teach the "
                                    "student something new", choices=sorted(degrade.PRESETS))
    correct_share: float = option(0.5, "with --anchor: the share of the pool drawn from --correct")
    contrast: Optional[list[float]] = option(None, "LOW HIGH: scale each sharp photo crop's contrast about its "
                                                   "mean by a factor drawn log-uniformly from [LOW, HIGH] before "
                                                   "degrading it (scenes in flatter light)",
                                             nargs=2, metavar=("LOW", "HIGH"))
    photo_scale: Optional[list[float]] = option(None, "LOW HIGH: cut each photo crop from the photo seen at a "
                                                      "scale drawn log-uniformly from [LOW, HIGH] ≤ 1 (area "
                                                      "downscaled), so detail comes at more sizes",
                                                nargs=2, metavar=("LOW", "HIGH"))
    correct_source: str = option("photos", "with --anchor: what the --correct crops are cut from: the "
                                 "training photos, or fresh pages of print (training.text_pages): mostly small "
                                 "print, half of it photographed a little soft, and a quarter large print", choices=["photos", "text-pages"])
    int8_aware: bool = option(False, "train (in fp32) through a simulation of training.quantize's INT8 "
                                     "rounding (ranges calibrated on the first training crops), so the "
                                     "INT8 model loses less; for fine-tuning with --init")


def load_teacher(path: Optional[str], device: torch.device) -> tuple[torch.nn.Module, Path]:
    teacher_path = Path(path) if path else DEFAULT_TEACHER
    if not teacher_path.is_file():
        where = "the default teacher" if path is None else "teacher"
        raise UsageError(f"{where} {teacher_path} not found; {TEACHER_HELP}")
    try:
        teacher = load_restormer(teacher_path, device=device)
    except CheckpointError as e:
        raise UsageError(str(e)) from None
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval(), teacher_path


def lr_factor(step: int, total_steps: int, opts: Options) -> float:
    """Multiplier of --lr at `step`: 1 for the constant schedule; for cosine, a linear
    warm-up, then a half cosine that reaches --min-lr at the last step."""
    if opts.schedule == "constant":
        return 1.0
    return warmup_cosine(step, total_steps, opts.warmup, opts.min_lr / opts.lr)


def student_path(name: str) -> str:
    """A student file named on the command line; 'shipped' is the one sharpcam ships."""
    return DEFAULT_MODEL if name == "shipped" else name


def build_student_from_options(opts: Options) -> torch.nn.Module:
    if opts.init:
        try:
            return load_student(student_path(opts.init)).train()
        except CheckpointError as e:
            raise UsageError(f"--init: {e}") from None
    overrides = {}
    if opts.student_config:
        try:
            overrides = json.loads(opts.student_config)
        except json.JSONDecodeError as e:
            raise UsageError(f"--student-config is not JSON ({e}); "
                             "write it like '{\"widths\": [16, 32, 64]}'") from None
    try:
        return build_student(opts.student, **overrides)
    except (TypeError, ValueError) as e:
        raise UsageError(f"--student-config: {e}") from None


def labelled_pool(opts: Options, runtime: distributed.Runtime, source: datasets.DataSource,
                  train_set, teacher: torch.nn.Module, teacher_path: Path) -> teacher_cache.CachedPool:
    """The teacher cache: crops labelled once (by the main process) and reused every epoch."""
    key = teacher_cache.cache_key(teacher_path=teacher_path, data=source.describe,
                                  degradation=opts.degradation, crop=opts.crop, resize=opts.resize,
                                  seed=opts.seed, pool=opts.cache_pool, ensemble=opts.teacher_ensemble)
    path = teacher_cache.cache_path(Path(opts.teacher_cache), key)
    pool = teacher_cache.load_pool(path) if runtime.is_main else None
    if runtime.is_main:
        if pool is not None:
            print(f"teacher cache hit: {path}", file=sys.stderr)
        else:
            print(f"teacher cache miss: labelling {opts.cache_pool} crops with the teacher -> {path}",
                  file=sys.stderr)
            with tqdm(total=opts.cache_pool, desc="teacher cache", unit="crop") as bar:
                pool = teacher_cache.build_pool(train_set, teacher, opts.cache_pool, runtime.device,
                                                opts.batch_size, bar.update)
            teacher_cache.save_pool(path, pool)
    distributed.barrier(runtime)
    return teacher_cache.CachedPool(pool if pool is not None else teacher_cache.load_pool(path))


def main(argv=None) -> dict:
    return loop.run_command(Options, run, argv, __doc__.splitlines()[0])


def run(opts: Options, runtime: distributed.Runtime) -> dict:
    if opts.mse > 0 and opts.mse_floor <= 0:
        raise UsageError(f"--mse-floor {opts.mse_floor} must be above 0 (a crop with nothing to fix "
                         "would get an infinite weight); the default is 0.005")
    out, bf16 = loop.start(opts, runtime)
    if opts.int8_aware and bf16:
        # bf16 keeps 8 bits of mantissa: its own rounding is as coarse as the INT8 rounding
        # the run simulates, and would drown it.
        if runtime.is_main:
            print("distill: --int8-aware trains in fp32 (bf16 off)", file=sys.stderr)
        bf16 = False
    device = runtime.device
    if opts.crop % 32:
        raise UsageError(f"--crop {opts.crop} must be a multiple of 32 (the student's size multiple)")
    alpha, beta = (0.0, 1.0) if opts.unpaired else (opts.alpha, opts.beta)
    if opts.anchor and (not opts.pool or beta > 0 or opts.paired or opts.unpaired):
        raise UsageError("--anchor fine-tunes on pooled crops of sharp photos against ground truth: "
                         "pass --pool N and --beta 0, without --paired or --unpaired")
    if opts.anchor and not opts.correct:
        raise UsageError("--anchor needs --correct PRESET: the crops that teach the student something new")
    if opts.correct and not opts.anchor:
        raise UsageError("--correct only applies beside --anchor STUDENT; pass both, or neither")
    if opts.correct_source != "photos" and not opts.anchor:
        raise UsageError(f"--correct-source {opts.correct_source} only applies beside --anchor STUDENT "
                         "--correct PRESET; pass those too, or leave it out")
    if opts.contrast and not 0 < opts.contrast[0] <= opts.contrast[1]:
        raise UsageError(f"--contrast {opts.contrast[0]:g} {opts.contrast[1]:g} must be two factors with "
                         "0 < LOW <= HIGH (1 1 leaves the contrast alone; 0.3 1 flattens up to ×0.3)")
    if opts.photo_scale and not 0 < opts.photo_scale[0] <= opts.photo_scale[1] <= 1:
        raise UsageError(f"--photo-scale {opts.photo_scale[0]:g} {opts.photo_scale[1]:g} must be two scales with "
                         "0 < LOW <= HIGH <= 1 (1 1 crops at full size; 0.5 1 sees photos down to half size)")
    if opts.anchor and not 0 < opts.correct_share < 1:
        raise UsageError(f"--correct-share {opts.correct_share} must be between 0 and 1 (a share of the pool)")

    # How each photo crop is drawn, the same for the training pool and an anchored
    # fine-tune's corrected crops.
    crop_options = dict(contrast=tuple(opts.contrast) if opts.contrast else None,
                        scale=tuple(opts.photo_scale) if opts.photo_scale else None)

    # --- data -------------------------------------------------------------------------
    source = datasets.load_source(data=opts.data, paired=opts.paired, unpaired=opts.unpaired,
                                  val_fraction=opts.val_fraction)
    train_set = datasets.train_dataset(source, crop=opts.crop, degradation=opts.degradation,
                                       seed=opts.seed, crops_per_image=opts.crops_per_image,
                                       resize=opts.resize, **crop_options)
    val_batch = datasets.validation_batch(source, crop=opts.crop, degradation=opts.degradation,
                                          seed=opts.seed, resize=opts.resize)

    # --- models -----------------------------------------------------------------------
    # With ground truth alone (--beta 0) the teacher is never trained against, so none is
    # needed; one that is named anyway still gives the validation baseline.
    teacher, teacher_path = (load_teacher(opts.teacher, device) if beta > 0 or opts.teacher
                             else (None, None))
    if teacher is not None:
        # Crops run whole (a tile holds the largest); the wrapper adds the ensemble.
        teacher = TeacherLabels(teacher, tile=max(256, opts.crop), ensemble=opts.teacher_ensemble,
                                batch_size=opts.batch_size)
    student = build_student_from_options(opts).to(device)
    anchor = None
    if opts.anchor:
        try:
            anchor = load_student(student_path(opts.anchor), device=device)
        except CheckpointError as e:
            raise UsageError(f"--anchor: {e}") from None
        for p in anchor.parameters():
            p.requires_grad_(False)
    optimizer = torch.optim.Adam(student.parameters(), lr=opts.lr)

    cached = opts.teacher_cache is not None and beta > 0
    if cached:
        train_set = labelled_pool(opts, runtime, source, train_set, teacher, teacher_path)
    elif anchor is not None:
        corrected = round(opts.pool * opts.correct_share)
        if not 0 < corrected < opts.pool:
            raise UsageError(f"--pool {opts.pool} at --correct-share {opts.correct_share} leaves one side "
                             "without crops; raise --pool")
        if runtime.is_main:
            print(f"degrading a pool of {opts.pool - corrected} {opts.degradation} crops kept at the anchor's "
                  f"output and {corrected} {opts.correct} crops"
                  + (" of fresh text pages" if opts.correct_source == "text-pages" else "")
                  + " against the sharp image, once", file=sys.stderr)
        if opts.correct_source == "text-pages":
            correct_set = datasets.TextPageCrops(opts.crop, opts.correct, seed=opts.seed + 1, length=corrected)
        else:
            correct_set = datasets.train_dataset(source, crop=opts.crop, degradation=opts.correct,
                                                 seed=opts.seed + 1, crops_per_image=opts.crops_per_image,
                                                 **crop_options)
        train_set = datasets.CropPool.concatenate(
            [datasets.CropPool.build(datasets.Flagged(train_set, 1.0), opts.pool - corrected, seed=opts.seed),
             datasets.CropPool.build(datasets.Flagged(correct_set, 0.0), corrected, seed=opts.seed + 1)],
            seed=opts.seed)
    elif opts.pool:
        if runtime.is_main:
            print(f"degrading a pool of {opts.pool} crops once", file=sys.stderr)
        train_set = datasets.CropPool.build(train_set, opts.pool, seed=opts.seed)
    workers = 0 if cached else opts.workers if opts.workers is not None else datasets.default_workers(device)
    simulation = None
    if opts.int8_aware:
        # Calibrated with the weights the run starts from (also when it resumes), so the
        # ranges, like onnxruntime's, are fixed for the whole run.
        simulation = Int8Simulation(student)
        crops = [train_set[i][0] for i in range(min(len(train_set), INT8_CALIBRATION_CROPS))]
        simulation.calibrate(torch.stack(crops).to(device).split(opts.batch_size))
    stage = loop.Stage(first_step=0, end_step=0, dataset=train_set, batch_size=opts.batch_size, seed=opts.seed,
                       workers=workers)
    steps_per_epoch = stage.steps_per_epoch(runtime.world)
    if steps_per_epoch == 0:
        raise UsageError(f"{len(train_set)} training crops are fewer than one batch of {opts.batch_size} "
                         "per process; lower --batch-size or raise --crops-per-image")
    total_steps = opts.epochs * steps_per_epoch
    if opts.max_steps is not None:
        total_steps = min(total_steps, opts.max_steps)
    stage.end_step = total_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, opts))

    # --- loop: α · L1 against the sharp image + β · L1 against the teacher [+ γ · relative MSE]
    objective = loop.Objective(alpha=alpha, beta=beta, teacher=None if cached else teacher,
                               has_sharp=source.kind != "unpaired", mse=opts.mse, mse_floor=opts.mse_floor,
                               anchor=anchor)
    # The validation baseline runs the teacher even when its labels come from the cache.
    validation = loop.prepare_validation(val_batch, teacher=teacher, has_sharp=objective.has_sharp,
                                         runtime=runtime, batch_size=opts.batch_size, bf16=bf16,
                                         held_out_files=len(source.val_files))
    teacher_name = str(teacher_path) if teacher_path else None
    meta = dict(command="distill", alpha=alpha, beta=beta, teacher=teacher_name, data=source.kind,
                degradation=opts.degradation, options=asdict(opts))
    outcome = loop.train(opts, runtime, command="distill", weights_name="student.pt", model=student,
                         model_name="student", optimizer=optimizer, scheduler=scheduler, stages=[stage],
                         objective=objective, validation=validation, bf16=bf16, meta=meta,
                         forward_model=simulation)

    # --- export -----------------------------------------------------------------------
    result = {}
    if runtime.is_main:
        student.eval()
        # Parity is checked on a real held-out photograph when there is one big enough.
        check = next((im for im in source.val_images if isinstance(im, np.ndarray)
                      and im.shape[0] >= 64 and im.shape[1] >= 96), None)
        final = outcome.final
        onnx_meta = dict(command="distill", step=outcome.steps, init=opts.init, anchor=opts.anchor,
                         correct=opts.correct, correct_source=opts.correct_source, teacher=teacher_name,
                         data=source.kind, degradation=opts.degradation, alpha=alpha, beta=beta,
                         val_psnr=final["psnr"] if final else None, val_ssim=final["ssim"] if final else None,
                         int8_aware=opts.int8_aware)
        try:
            onnx_diff = export_student(student.cpu(), out / "student.onnx", meta=onnx_meta, check_image=check)
        except ExportError as e:
            raise UsageError(f"ONNX export failed: {e}") from None
        student.to(device)
        result = loop.finish(out, outcome, command="distill", plot_title="distillation", runtime=runtime,
                             source=source, validation=validation, opts=opts,
                             epochs=outcome.steps / steps_per_epoch, steps_per_epoch=steps_per_epoch,
                             alpha=alpha, beta=beta, teacher=teacher_name,
                             teacher_cache=opts.teacher_cache if cached else None,
                             train_crops=len(train_set), student=student.config,
                             onnx_max_abs_diff=onnx_diff)
        print(f"wrote {out/'student.pt'}, {out/'student.onnx'} (ONNX parity max |diff| {onnx_diff:.2e}), "
              f"{out/'metrics.json'}, {out/'loss.png'}", file=sys.stderr)
    distributed.barrier(runtime)
    return result


if __name__ == "__main__":
    main()
