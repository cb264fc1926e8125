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
from dataclasses import asdict, dataclass
from typing import Optional

import torch

from models import CheckpointError, RESTORMER_PRESETS, Restormer, load_restormer
from training import data as datasets
from training import distributed, loop
from training.errors import UsageError
from training.options import option
from training.schedule import warmup_cosine


@dataclass
class Options(loop.LoopOptions):
    """Train or fine-tune a Restormer teacher."""
    out: str = option("runs/teacher", "run folder for checkpoints, logs and metrics")
    preset: str = option("small", "Restormer configuration", choices=sorted(RESTORMER_PRESETS))
    init: Optional[str] = option(None, "start from these weights (e.g. motion_deblurring.pth); "
                                 "their configuration replaces --preset")
    crop: Optional[int] = option(None, "training crop size, multiple of 8 (default: 256 on CUDA, 128 on CPU)")
    batch_size: Optional[int] = option(None, "batch size per process at --crop (default: 8 on CUDA, 2 on CPU)")
    progressive: Optional[list[int]] = option(None, "patch sizes for equal parts of --steps, e.g. 128 192 256; "
                                              "the batch shrinks so pixels per batch stay constant")
    steps: int = option(20000, "length of the learning-rate schedule")
    lr: float = option(3e-4, "peak AdamW learning rate")
    warmup: int = option(500, "linear warm-up steps")
    weight_decay: float = option(1e-4, "AdamW weight decay")
    grad_clip: float = option(0.01, "max gradient norm (Restormer's setting)")
    ckpt_every: int = option(500, "write checkpoints every N steps")


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
    return loop.run_command(Options, run, argv, __doc__.splitlines()[0])


def run(opts: Options, runtime: distributed.Runtime) -> dict:
    out, bf16 = loop.start(opts, runtime)
    device = runtime.device
    if opts.batch_size is None:
        opts.batch_size = 8 if device.type == "cuda" else 2
    for size in [opts.crop] + list(opts.progressive or []):
        if size % 8:
            raise UsageError(f"patch size {size} must be a multiple of 8 (Restormer's three down-samplings)")

    # --- data -------------------------------------------------------------------------
    source = datasets.load_source(data=opts.data, paired=opts.paired, val_fraction=opts.val_fraction)
    val_batch = datasets.validation_batch(source, crop=opts.crop, degradation=opts.degradation,
                                          seed=opts.seed, resize=opts.resize)
    total_steps = opts.steps if opts.max_steps is None else min(opts.steps, opts.max_steps)
    plan = stages(opts)
    workers = opts.workers if opts.workers is not None else datasets.default_workers(device)
    train_stages = []
    for i, (first, patch, batch_size) in enumerate(plan):
        end = plan[i + 1][0] if i + 1 < len(plan) else total_steps
        crops = datasets.train_dataset(source, crop=patch, degradation=opts.degradation, seed=opts.seed + 1000 * i,
                                       crops_per_image=opts.crops_per_image, resize=opts.resize)
        train_stages.append(loop.Stage(first_step=first, end_step=min(end, total_steps), dataset=crops,
                                       batch_size=batch_size, seed=opts.seed + 1000 * i, workers=workers,
                                       name=f"{patch}×{patch} crops"))

    # --- model ------------------------------------------------------------------------
    if opts.init:
        try:
            model = load_restormer(opts.init).train()
        except CheckpointError as e:
            raise UsageError(f"--init: {e}") from None
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

    # --- loop: L1 against the sharp image ------------------------------------------------
    objective = loop.Objective(alpha=1.0, beta=0.0)
    validation = loop.prepare_validation(val_batch, teacher=None, has_sharp=True, runtime=runtime,
                                         batch_size=opts.batch_size, bf16=bf16,
                                         held_out_files=len(source.val_files))
    outcome = loop.train(opts, runtime, command="teacher", weights_name="teacher.pt", model=model,
                         model_name="Restormer configuration", optimizer=optimizer, scheduler=scheduler,
                         stages=train_stages, objective=objective, validation=validation, bf16=bf16,
                         meta=dict(command="teacher", data=source.kind, degradation=opts.degradation,
                                   init=opts.init, options=asdict(opts)))

    # --- save -------------------------------------------------------------------------
    result = {}
    if runtime.is_main:
        result = loop.finish(out, outcome, command="teacher", plot_title="teacher", runtime=runtime,
                             source=source, validation=validation, opts=opts, config=model.config,
                             parameters=sum(p.numel() for p in model.parameters()), bf16=bf16)
        print(f"wrote {out/'teacher.pt'} ({result['parameters']:,} parameters), {out/'metrics.json'}, "
              f"{out/'loss.png'}", file=sys.stderr)
    distributed.barrier(runtime)
    return result


if __name__ == "__main__":
    main()
