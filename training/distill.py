"""Distil a Restormer teacher into the Residual UNet student: ``python -m training.distill``.

loss = α · L1(student, sharp) + β · L1(student, teacher(degraded)), the original
project's recipe (α 0.8, β 0.2, Adam lr 1e-4, batch 4, 256×256 crops, 5 epochs), on
sharp photos degraded on the fly (``--data``, or scikit-image's photos by default),
on paired folders (``--paired BLUR SHARP``), or on frames without ground truth
(``--unpaired DIR``: teacher labels only, α 0, β 1).

The teacher runs on every batch on a GPU; on a CPU ``--teacher-cache DIR`` labels a
fixed pool of crops once and reuses it, and ``--pool N`` (ground truth alone) degrades N
crops once, so the loop is compute-bound. The recipe that made the shipped student
(warm-up + cosine schedule, clipping) is in MODEL_CARD.md. Validation PSNR/SSIM on
held-out files each epoch (or ``--eval-every``). Resumable (``--resume``), DDP under ``torchrun``. Writes OUT/student.pt,
OUT/student.onnx (parity checked), OUT/metrics.json, OUT/log.jsonl, OUT/loss.png.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from models import CheckpointError, build_student, load_restormer, STUDENT_PRESETS
from models.checkpoint import save_checkpoint
from training import data as datasets
from training import degrade, distributed, teacher_cache
from training.options import option, parse_options
from training.quality import batch_scores
from training import runlog
from training.runlog import JsonLog, plot_curves, rng_state, write_json
from training.schedule import warmup_cosine

DEFAULT_TEACHER = Path("checkpoints/motion_deblurring.pth")
TEACHER_HELP = (
    "get the released Restormer motion-deblurring weights from the Restormer GitHub releases "
    "(swz30/Restormer, Motion_Deblurring/pretrained_models/motion_deblurring.pth) and save them "
    f"as {DEFAULT_TEACHER} or pass --teacher PATH; or train a teacher with "
    "`python -m training.teacher --out runs/teacher` and pass --teacher runs/teacher/teacher.pt")


@dataclass
class Options:
    """Distil a Restormer teacher into the SharpCam student."""
    out: str = option("runs/distill", "run folder for checkpoints, ONNX, metrics and plots")
    teacher: Optional[str] = option(None, f"teacher weights (released or ours); default {DEFAULT_TEACHER}")
    student: str = option("realtime", "student preset", choices=sorted(STUDENT_PRESETS))
    student_config: Optional[str] = option(None, "JSON overrides of the preset's configuration, "
                                           "e.g. '{\"widths\": [16, 32, 64]}' (design sweeps)")
    data: Optional[str] = option(None, "folder of sharp images (recursive); default: scikit-image's photos")
    paired: Optional[list[str]] = option(None, "BLUR_DIR SHARP_DIR, pairs by file name", nargs=2,
                                         metavar=("BLUR_DIR", "SHARP_DIR"))
    unpaired: Optional[str] = option(None, "frames with no sharp reference: teacher labels only (α 0, β 1)")
    resize: Optional[int] = option(None, "paired mode: resize both to R×R first (original protocol: 256)")
    degradation: str = option("webcam", "synthetic degradation preset", choices=sorted(degrade.PRESETS))
    crop: Optional[int] = option(None, "training crop size, multiple of 32 (default: 256 on CUDA, 128 on CPU)")
    crops_per_image: int = option(16, "random crops per image per epoch")
    pool: int = option(0, "pre-degrade this many crops once and reuse them every epoch, flipped and "
                          "rotated afresh, so a CPU run is compute-bound (0: degrade on the fly)")
    val_fraction: float = option(0.15, "share of files held out for validation (by name hash)")
    alpha: float = option(0.8, "weight of L1(student, sharp)")
    beta: float = option(0.2, "weight of L1(student, teacher)")
    lr: float = option(1e-4, "Adam learning rate (the peak, with --schedule cosine)")
    schedule: str = option("constant", "learning rate: constant (the original recipe) or cosine "
                                       "(linear --warmup, then cosine down to --min-lr)",
                           choices=["constant", "cosine"])
    warmup: int = option(0, "linear warm-up steps (cosine schedule)")
    min_lr: float = option(1e-6, "learning rate at the end of the cosine schedule")
    grad_clip: float = option(0.0, "max gradient norm (0: no clipping)")
    batch_size: int = option(4, "batch size per process")
    epochs: int = option(5, "epochs over the training crops")
    max_steps: Optional[int] = option(None, "stop after this many steps (smoke runs)")
    teacher_cache: Optional[str] = option(None, "folder for precomputed teacher outputs (for CPUs)")
    cache_pool: int = option(256, "number of crops the teacher labels for the cache")
    eval_every: int = option(0, "validate every N steps (0: once per epoch, and at the end)")
    ckpt_every: int = option(200, "write OUT/last.pt every N steps")
    log_every: int = option(10, "log the training loss every N steps")
    resume: bool = option(False, "continue from OUT/last.pt")
    device: str = option("auto", "cpu, cuda or auto", choices=["cpu", "cuda", "auto"])
    bf16: Optional[bool] = option(None, "bf16 autocast (default: on with CUDA)")
    compile: bool = option(False, "torch.compile the student (CUDA)")
    workers: Optional[int] = option(None, "DataLoader workers (default: 8 on CUDA, 0 on CPU)")
    seed: int = option(0, "seed for crops, degradations, order and initial weights")


def load_teacher(path: Optional[str], device: torch.device) -> tuple[torch.nn.Module, Path]:
    teacher_path = Path(path) if path else DEFAULT_TEACHER
    if not teacher_path.is_file():
        where = "the default teacher" if path is None else "teacher"
        raise SystemExit(f"error: {where} {teacher_path} not found; {TEACHER_HELP}")
    try:
        teacher = load_restormer(teacher_path, device=device)
    except CheckpointError as e:
        raise SystemExit(f"error: {e}") from None
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval(), teacher_path


def lr_factor(step: int, total_steps: int, opts: Options) -> float:
    """Multiplier of --lr at `step`: 1 for the constant schedule; for cosine, a linear
    warm-up, then a half cosine that reaches --min-lr at the last step."""
    if opts.schedule == "constant":
        return 1.0
    return warmup_cosine(step, total_steps, opts.warmup, opts.min_lr / opts.lr)


def build_student_from_options(opts: Options) -> torch.nn.Module:
    overrides = {}
    if opts.student_config:
        try:
            overrides = json.loads(opts.student_config)
        except json.JSONDecodeError as e:
            raise SystemExit(f"error: --student-config is not JSON ({e}); "
                             "write it like '{\"widths\": [16, 32, 64]}'") from None
    try:
        return build_student(opts.student, **overrides)
    except (TypeError, ValueError) as e:
        raise SystemExit(f"error: --student-config: {e}") from None


def main(argv=None) -> dict:
    opts = parse_options(Options, argv, __doc__.splitlines()[0])
    runtime = distributed.setup(opts.device)
    try:
        return run(opts, runtime)
    finally:
        distributed.teardown(runtime)


def run(opts: Options, runtime: distributed.Runtime) -> dict:
    device, main_process = runtime.device, runtime.is_main
    out = Path(opts.out)
    bf16 = opts.bf16 if opts.bf16 is not None else device.type == "cuda"
    if opts.crop is None:
        opts.crop = datasets.default_crop(device, announce=main_process)
    if opts.crop % 32:
        raise SystemExit(f"error: --crop {opts.crop} must be a multiple of 32 (the student's size multiple)")
    alpha, beta = (0.0, 1.0) if opts.unpaired else (opts.alpha, opts.beta)
    torch.manual_seed(opts.seed)

    # --- data -------------------------------------------------------------------------
    source = datasets.load_source(data=opts.data, paired=opts.paired, unpaired=opts.unpaired,
                                  val_fraction=opts.val_fraction)
    train_set = datasets.train_dataset(source, crop=opts.crop, degradation=opts.degradation,
                                       seed=opts.seed, crops_per_image=opts.crops_per_image,
                                       resize=opts.resize)
    val_batch = datasets.validation_batch(source, crop=opts.crop, degradation=opts.degradation,
                                          seed=opts.seed, resize=opts.resize)

    # --- models -----------------------------------------------------------------------
    # With ground truth alone (--beta 0) the teacher is never trained against, so none is
    # needed; one that is named anyway still gives the validation baseline.
    teacher, teacher_path = (load_teacher(opts.teacher, device) if beta > 0 or opts.teacher
                             else (None, None))
    student = build_student_from_options(opts).to(device)
    optimizer = torch.optim.Adam(student.parameters(), lr=opts.lr)

    cached = opts.teacher_cache is not None and beta > 0
    if opts.pool and not cached:
        if main_process:
            print(f"degrading a pool of {opts.pool} crops once", file=sys.stderr)
        train_set = datasets.CropPool.build(train_set, opts.pool, seed=opts.seed)
    if cached:
        key = teacher_cache.cache_key(teacher_path=teacher_path, data=source.describe,
                                      degradation=opts.degradation, crop=opts.crop, resize=opts.resize,
                                      seed=opts.seed, pool=opts.cache_pool)
        path = teacher_cache.cache_path(Path(opts.teacher_cache), key)
        pool = teacher_cache.load_pool(path) if main_process else None
        if main_process:
            if pool is not None:
                print(f"teacher cache hit: {path}", file=sys.stderr)
            else:
                print(f"teacher cache miss: labelling {opts.cache_pool} crops with the teacher -> {path}",
                      file=sys.stderr)
                with tqdm(total=opts.cache_pool, desc="teacher cache", unit="crop") as bar:
                    pool = teacher_cache.build_pool(train_set, teacher, opts.cache_pool, device,
                                                    opts.batch_size, bar.update)
                teacher_cache.save_pool(path, pool)
        distributed.barrier(runtime)
        if pool is None:
            pool = teacher_cache.load_pool(path)
        train_set = teacher_cache.CachedPool(pool)
    has_sharp = source.kind != "unpaired"

    sampler_probe = datasets.RunSampler(len(train_set), opts.seed, opts.batch_size, world=runtime.world)
    steps_per_epoch = sampler_probe.batches_per_epoch
    if steps_per_epoch == 0:
        raise SystemExit(f"error: {len(train_set)} training crops are fewer than one batch of "
                         f"{opts.batch_size} per process; lower --batch-size or raise --crops-per-image")
    total_steps = opts.epochs * steps_per_epoch
    if opts.max_steps is not None:
        total_steps = min(total_steps, opts.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, opts))

    # --- resume -----------------------------------------------------------------------
    last = out / "last.pt"
    step = (runlog.resume(last, student, optimizer, scheduler, what="student", verbose=main_process)
            if opts.resume else 0)
    log = JsonLog(out / "log.jsonl", resume_step=step) if main_process else None

    model = student
    if opts.compile:
        model = torch.compile(model)
    if runtime.distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[runtime.local_rank] if device.type == "cuda" else None)

    workers = opts.workers if opts.workers is not None else datasets.default_workers(device)
    sampler = datasets.RunSampler(len(train_set), opts.seed, opts.batch_size, rank=runtime.rank,
                                  world=runtime.world, start_epoch=step // steps_per_epoch,
                                  end_epoch=-(-total_steps // steps_per_epoch),
                                  skip_batches=step % steps_per_epoch)
    loader = datasets.make_loader(train_set, sampler, opts.batch_size, device, 0 if cached else workers)

    # --- validation -------------------------------------------------------------------
    @torch.no_grad()
    def predict(network, inputs: torch.Tensor) -> torch.Tensor:
        outs = []
        for chunk in inputs.split(opts.batch_size):
            with distributed.autocast(device, bf16):
                outs.append(network(chunk.to(device)).float().cpu())
        return torch.cat(outs)

    baseline: dict = {}
    if main_process and val_batch:
        val_inputs = val_batch[0]
        teacher_val = predict(teacher, val_inputs) if teacher is not None else None
        val_reference = val_batch[1] if has_sharp else teacher_val
        baseline["input_psnr"], baseline["input_ssim"] = batch_scores(val_reference, val_inputs)
        if has_sharp and teacher_val is not None:
            baseline["teacher_psnr"], baseline["teacher_ssim"] = batch_scores(val_reference, teacher_val)
        reference_name = "sharp" if has_sharp else "teacher output (no ground truth)"
        print(f"validation: {len(val_inputs)} crops from {len(source.val_files)} held-out files, against "
              f"{reference_name}; degraded input PSNR {baseline['input_psnr']:.2f} dB "
              f"SSIM {baseline['input_ssim']:.4f}", file=sys.stderr)

    def validate() -> dict | None:
        if not (main_process and val_batch):
            return None
        student.eval()
        out_val = predict(student, val_batch[0])
        student.train()
        val_psnr, val_ssim = batch_scores(val_reference, out_val)
        record = dict(kind="val", step=step, epoch=step / steps_per_epoch, psnr=val_psnr, ssim=val_ssim,
                      **baseline)
        log.write(**record)
        tqdm.write(f"step {step}: validation PSNR {val_psnr:.2f} dB SSIM {val_ssim:.4f} "
                   f"(input {baseline['input_psnr']:.2f} dB)", file=sys.stderr)
        return record

    def save() -> None:
        if not main_process:
            return
        meta = dict(command="distill", step=step, epoch=step / steps_per_epoch, alpha=alpha, beta=beta,
                    teacher=str(teacher_path) if teacher_path else None, data=source.kind, degradation=opts.degradation,
                    options=asdict(opts))
        train_state = dict(step=step, optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                           rng=rng_state())
        save_checkpoint(last, arch=student.arch, config=student.config, state_dict=student.state_dict(),
                        meta=meta, train_state=train_state)
        save_checkpoint(out / "student.pt", arch=student.arch, config=student.config,
                        state_dict=student.state_dict(), meta=meta)

    # --- loop -------------------------------------------------------------------------
    student.train()
    bar = tqdm(total=total_steps, initial=step, desc="distill", unit="step", disable=not main_process,
               dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else 30.0)
    started, samples_seen, loss_sum, loss_parts, logged = time.time(), 0, 0.0, {}, 0
    stop = distributed.StopRequest(runtime)
    for batch in loader:
        if step >= total_steps or stop.requested():
            break
        inputs = batch[0].to(device, non_blocking=True)
        sharp = batch[1].to(device, non_blocking=True) if has_sharp else None
        with distributed.autocast(device, bf16):
            prediction = model(inputs).float()
        if beta == 0:  # ground truth alone: running the teacher would be wasted work
            loss_teacher = torch.zeros((), device=device)
        elif cached:
            loss_teacher = F.l1_loss(prediction, batch[-1].to(device, non_blocking=True))
        else:
            with torch.no_grad(), distributed.autocast(device, bf16):
                target_teacher = teacher(inputs).float()
            loss_teacher = F.l1_loss(prediction, target_teacher)
        loss_sharp = F.l1_loss(prediction, sharp) if sharp is not None else torch.zeros((), device=device)
        loss = alpha * loss_sharp + beta * loss_teacher
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if opts.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(student.parameters(), opts.grad_clip)
        optimizer.step()
        scheduler.step()
        step += 1
        samples_seen += inputs.shape[0] * runtime.world
        loss_sum += loss.item()
        loss_parts["loss_sharp"] = loss_parts.get("loss_sharp", 0.0) + loss_sharp.item()
        loss_parts["loss_teacher"] = loss_parts.get("loss_teacher", 0.0) + loss_teacher.item()
        logged += 1
        rate = samples_seen / max(1e-9, time.time() - started)
        bar.set_postfix(loss=f"{loss.item():.4f}", samples_s=f"{rate:.1f}", refresh=False)
        bar.update(1)
        if main_process and (step % opts.log_every == 0 or step == total_steps or step == 1):
            log.write(kind="train", step=step, epoch=step / steps_per_epoch, loss=loss_sum / logged,
                      **{k: v / logged for k, v in loss_parts.items()}, samples_per_s=rate,
                      lr=optimizer.param_groups[0]["lr"])
            loss_sum, loss_parts, logged = 0.0, {}, 0
        end_of_epoch = step % steps_per_epoch == 0
        due = step % opts.eval_every == 0 if opts.eval_every else end_of_epoch
        if due and step != total_steps:
            validate()
        if step % opts.ckpt_every == 0 and step != total_steps:
            save()
    bar.close()
    stop.restore()
    if step < total_steps:
        save()
        raise SystemExit(f"stopped at step {step}: {last} saved; continue with --resume")

    # --- save -------------------------------------------------------------------------
    final = validate()
    save()
    result = {}
    if main_process:
        student.eval()
        from training.export import ExportError, export_student
        # Parity is checked on a real held-out photograph when there is one big enough.
        check = next((im for im in source.val_images if isinstance(im, np.ndarray)
                      and im.shape[0] >= 64 and im.shape[1] >= 96), None)
        meta = dict(command="distill", step=step, teacher=str(teacher_path) if teacher_path else None, data=source.kind,
                    degradation=opts.degradation, alpha=alpha, beta=beta,
                    val_psnr=final["psnr"] if final else None, val_ssim=final["ssim"] if final else None)
        try:
            onnx_diff = export_student(student.cpu(), out / "student.onnx", meta=meta,
                                       check_image=check)
        except ExportError as e:
            raise SystemExit(f"error: ONNX export failed: {e}") from None
        student.to(device)
        elapsed = time.time() - started
        result = dict(command="distill", steps=step, epochs=step / steps_per_epoch,
                      steps_per_epoch=steps_per_epoch, world_size=runtime.world, alpha=alpha, beta=beta,
                      teacher=str(teacher_path) if teacher_path else None, teacher_cache=str(path) if cached else None,
                      data=dict(kind=source.kind, train_files=len(source.train_files),
                                val_files=len(source.val_files), train_crops=len(train_set)),
                      student=student.config, seconds=elapsed,
                      samples_per_s=samples_seen / max(1e-9, elapsed), onnx_max_abs_diff=onnx_diff,
                      validation=dict(baseline=baseline, final=final,
                                      history=[r for r in log.records if r["kind"] == "val"]),
                      options=asdict(opts))
        write_json(out / "metrics.json", result)
        plot_curves(log.records, out / "loss.png", "distillation")
        print(f"wrote {out/'student.pt'}, {out/'student.onnx'} (ONNX parity max |diff| {onnx_diff:.2e}), "
              f"{out/'metrics.json'}, {out/'loss.png'}", file=sys.stderr)
    distributed.barrier(runtime)
    return result


if __name__ == "__main__":
    main()
