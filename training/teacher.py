"""Train or fine-tune the Restormer teacher: ``python -m training.teacher``.

Any configuration (``--preset tiny|small|released``), from scratch or from released
weights (``--init motion_deblurring.pth``), on the same data as distillation.
Restormer's recipe: L1 loss, AdamW, cosine schedule after a linear warm-up, gradient
norm clipped, optionally progressive patch sizes (small crops early, larger later).
bf16 autocast on CUDA and ``--compile``; DDP under ``torchrun``; resumable; writes
OUT/teacher.pt (+ OUT/last.pt to resume), OUT/log.jsonl, OUT/metrics.json, OUT/loss.png.
"""
from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from tqdm import tqdm

from models import CheckpointError, RESTORMER_PRESETS, Restormer, load_restormer
from models.checkpoint import save_checkpoint
from training import data as datasets
from training import degrade, distributed
from training.options import option, parse_options
from training.quality import batch_scores
from training import runlog
from training.runlog import JsonLog, plot_curves, rng_state, write_json
from training.schedule import warmup_cosine


@dataclass
class Options:
    """Train or fine-tune a Restormer teacher."""
    out: str = option("runs/teacher", "run folder for checkpoints, logs and metrics")
    preset: str = option("small", "Restormer configuration", choices=sorted(RESTORMER_PRESETS))
    init: Optional[str] = option(None, "start from these weights (e.g. motion_deblurring.pth); "
                                 "their configuration replaces --preset")
    data: Optional[str] = option(None, "folder of sharp images (recursive); default: scikit-image's photos")
    paired: Optional[list[str]] = option(None, "BLUR_DIR SHARP_DIR, pairs by file name", nargs=2,
                                         metavar=("BLUR_DIR", "SHARP_DIR"))
    resize: Optional[int] = option(None, "paired mode: resize both to R×R first (original protocol: 256)")
    degradation: str = option("webcam", "synthetic degradation preset", choices=sorted(degrade.PRESETS))
    crop: Optional[int] = option(None, "training crop size, multiple of 8 (default: 256 on CUDA, 128 on CPU)")
    crops_per_image: int = option(16, "random crops per image per epoch")
    val_fraction: float = option(0.15, "share of files held out for validation (by name hash)")
    batch_size: Optional[int] = option(None, "batch size per process at --crop (default: 8 on CUDA, 2 on CPU)")
    progressive: Optional[list[int]] = option(None, "patch sizes for equal parts of --steps, e.g. 128 192 256; "
                                              "the batch shrinks so pixels per batch stay constant")
    steps: int = option(20000, "length of the learning-rate schedule")
    max_steps: Optional[int] = option(None, "stop after this many steps (smoke runs)")
    lr: float = option(3e-4, "peak AdamW learning rate")
    min_lr: float = option(1e-6, "learning rate at the end of the cosine")
    warmup: int = option(500, "linear warm-up steps")
    weight_decay: float = option(1e-4, "AdamW weight decay")
    grad_clip: float = option(0.01, "max gradient norm (Restormer's setting)")
    eval_every: int = option(500, "validate every N steps")
    ckpt_every: int = option(500, "write checkpoints every N steps")
    log_every: int = option(10, "log the loss every N steps")
    resume: bool = option(False, "continue from OUT/last.pt")
    device: str = option("auto", "cpu, cuda or auto", choices=["cpu", "cuda", "auto"])
    bf16: Optional[bool] = option(None, "bf16 autocast (default: on with CUDA)")
    compile: bool = option(False, "torch.compile the model (CUDA)")
    workers: Optional[int] = option(None, "DataLoader workers (default: 8 on CUDA, 0 on CPU)")
    seed: int = option(0, "seed for crops, degradations, order and initial weights")


def lr_factor(step: int, opts: Options) -> float:
    """Multiplier of --lr: linear warm-up, then cosine down to --min-lr at --steps."""
    return warmup_cosine(step, opts.steps, min(opts.warmup, max(1, opts.steps // 10)),
                         opts.min_lr / opts.lr)


def stages(opts: Options) -> list[tuple[int, int, int]]:
    """(first step, patch size, batch size) for each progressive stage."""
    if not opts.progressive:
        return [(0, opts.crop, opts.batch_size)]
    n = len(opts.progressive)
    return [(opts.steps * i // n, patch, max(1, round(opts.batch_size * (opts.crop / patch) ** 2)))
            for i, patch in enumerate(opts.progressive)]


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
    if opts.batch_size is None:
        opts.batch_size = 8 if device.type == "cuda" else 2
    for size in [opts.crop] + list(opts.progressive or []):
        if size % 8:
            raise SystemExit(f"error: patch size {size} must be a multiple of 8 (Restormer's three down-samplings)")
    torch.manual_seed(opts.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # --- data -------------------------------------------------------------------------
    source = datasets.load_source(data=opts.data, paired=opts.paired, val_fraction=opts.val_fraction)
    val_batch = datasets.validation_batch(source, crop=opts.crop, degradation=opts.degradation,
                                          seed=opts.seed, resize=opts.resize)

    # --- model ------------------------------------------------------------------------
    if opts.init:
        try:
            model = load_restormer(opts.init).train()
        except CheckpointError as e:
            raise SystemExit(f"error: --init: {e}") from None
    else:
        model = Restormer(**RESTORMER_PRESETS[opts.preset])
        # Start as the identity (output conv zero, the global residual passes the input
        # through): early training is stable and even a short run is a usable teacher.
        torch.nn.init.zeros_(model.output.weight)
        if model.output.bias is not None:
            torch.nn.init.zeros_(model.output.bias)
    model = model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay,
                                  betas=(0.9, 0.999))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, opts))

    last = out / "last.pt"
    step = (runlog.resume(last, model, optimizer, scheduler, what="Restormer configuration",
                          verbose=main_process) if opts.resume else 0)
    log = JsonLog(out / "log.jsonl", resume_step=step) if main_process else None

    network = torch.compile(model) if opts.compile else model
    if runtime.distributed:
        network = torch.nn.parallel.DistributedDataParallel(
            network, device_ids=[runtime.local_rank] if device.type == "cuda" else None)
    total_steps = opts.steps if opts.max_steps is None else min(opts.steps, opts.max_steps)
    workers = opts.workers if opts.workers is not None else datasets.default_workers(device)

    # --- validation -------------------------------------------------------------------
    @torch.no_grad()
    def predict(inputs: torch.Tensor) -> torch.Tensor:
        outs = []
        for chunk in inputs.split(max(1, opts.batch_size)):
            with distributed.autocast(device, bf16):
                outs.append(model(chunk.to(device)).float().cpu())
        return torch.cat(outs)

    baseline = {}
    if main_process and val_batch:
        baseline["input_psnr"], baseline["input_ssim"] = batch_scores(val_batch[1], val_batch[0])

    def validate() -> dict | None:
        if not (main_process and val_batch):
            return None
        model.eval()
        val_psnr, val_ssim = batch_scores(val_batch[1], predict(val_batch[0]))
        model.train()
        record = dict(kind="val", step=step, psnr=val_psnr, ssim=val_ssim, **baseline)
        log.write(**record)
        tqdm.write(f"step {step}: validation PSNR {val_psnr:.2f} dB SSIM {val_ssim:.4f} "
                   f"(degraded input {baseline['input_psnr']:.2f} dB)", file=sys.stderr)
        return record

    def save(with_train_state: bool) -> None:
        if not main_process:
            return
        meta = dict(command="teacher", step=step, data=source.kind, degradation=opts.degradation,
                    init=opts.init, options=asdict(opts))
        if with_train_state:
            save_checkpoint(last, arch=model.arch, config=model.config, state_dict=model.state_dict(),
                            meta=meta, train_state=dict(step=step, optimizer=optimizer.state_dict(),
                                                        scheduler=scheduler.state_dict(), rng=rng_state()))
        save_checkpoint(out / "teacher.pt", arch=model.arch, config=model.config,
                        state_dict=model.state_dict(), meta=meta)

    # --- loop -------------------------------------------------------------------------
    model.train()
    bar = tqdm(total=total_steps, initial=step, desc="teacher", unit="step", disable=not main_process,
               dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else 30.0)
    started, samples_seen, loss_sum, logged = time.time(), 0, 0.0, 0
    plan = stages(opts)
    stop = distributed.StopRequest(runtime)
    for index, (first, patch, batch_size) in enumerate(plan):
        stage_end = plan[index + 1][0] if index + 1 < len(plan) else total_steps
        stage_end = min(stage_end, total_steps)
        if step >= stage_end or stop.flag:
            continue
        train_set = datasets.train_dataset(source, crop=patch, degradation=opts.degradation,
                                           seed=opts.seed + 1000 * index,
                                           crops_per_image=opts.crops_per_image, resize=opts.resize)
        probe = datasets.RunSampler(len(train_set), 0, batch_size, world=runtime.world)
        per_epoch = probe.batches_per_epoch
        if per_epoch == 0:
            raise SystemExit(f"error: {len(train_set)} training crops are fewer than one batch of "
                             f"{batch_size} per process; lower --batch-size or raise --crops-per-image")
        local = step - first
        sampler = datasets.RunSampler(len(train_set), opts.seed + 1000 * index, batch_size,
                                      rank=runtime.rank, world=runtime.world,
                                      start_epoch=local // per_epoch,
                                      end_epoch=-(-(stage_end - first) // per_epoch),
                                      skip_batches=local % per_epoch)
        if main_process and len(plan) > 1:
            tqdm.write(f"stage {index + 1}/{len(plan)}: {patch}×{patch} crops, batch {batch_size}",
                       file=sys.stderr)
        for inputs, sharp in datasets.make_loader(train_set, sampler, batch_size, device, workers):
            if step >= stage_end or stop.requested():
                break
            inputs = inputs.to(device, non_blocking=True)
            sharp = sharp.to(device, non_blocking=True)
            with distributed.autocast(device, bf16):
                prediction = network(inputs)
            loss = F.l1_loss(prediction.float(), sharp)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if opts.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), opts.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            samples_seen += inputs.shape[0] * runtime.world
            loss_sum, logged = loss_sum + loss.item(), logged + 1
            rate = samples_seen / max(1e-9, time.time() - started)
            bar.set_postfix(loss=f"{loss.item():.4f}", samples_s=f"{rate:.1f}", patch=patch, refresh=False)
            bar.update(1)
            if main_process and (step % opts.log_every == 0 or step == total_steps or step == 1):
                log.write(kind="train", step=step, loss=loss_sum / logged, samples_per_s=rate,
                          lr=scheduler.get_last_lr()[0], patch=patch, batch=batch_size * runtime.world)
                loss_sum, logged = 0.0, 0
            if step % opts.eval_every == 0 and step != total_steps:
                validate()
            if step % opts.ckpt_every == 0 and step != total_steps:
                save(with_train_state=True)
    bar.close()
    stop.restore()
    if step < total_steps:
        save(with_train_state=True)
        raise SystemExit(f"stopped at step {step}: {last} saved; continue with --resume")

    # --- save -------------------------------------------------------------------------
    final = validate()
    save(with_train_state=True)
    result = {}
    if main_process:
        elapsed = time.time() - started
        result = dict(command="teacher", steps=step, world_size=runtime.world, config=model.config,
                      parameters=sum(p.numel() for p in model.parameters()), seconds=elapsed,
                      samples_per_s=samples_seen / max(1e-9, elapsed), device=str(device), bf16=bf16,
                      data=dict(kind=source.kind, train_files=len(source.train_files),
                                val_files=len(source.val_files)),
                      validation=dict(baseline=baseline, final=final,
                                      history=[r for r in log.records if r["kind"] == "val"]),
                      options=asdict(opts))
        write_json(out / "metrics.json", result)
        plot_curves(log.records, out / "loss.png", "teacher")
        print(f"wrote {out/'teacher.pt'} ({result['parameters']:,} parameters), {out/'metrics.json'}, "
              f"{out/'loss.png'}", file=sys.stderr)
    distributed.barrier(runtime)
    return result


if __name__ == "__main__":
    main()
