"""The training loop that ``training.teacher`` and ``training.distill`` share.

A command parses its options (``LoopOptions`` plus its own), builds its model,
optimizer, learning-rate schedule, data ``Stage``s and ``Objective``, and calls
``train``. The loop resumes from OUT/last.pt, wraps the model for ``--compile`` and
DDP, steps through the stages, logs to OUT/log.jsonl, validates, writes checkpoints,
turns Ctrl-C / SIGTERM into a resumable stop, and ends with a last validation and
checkpoint. Inside the loop the commands differ only in what the loss compares
against: the sharp image for the teacher (α 1, β 0), α·sharp + β·teacher labels for
the student.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm import tqdm

from models.checkpoint import save_checkpoint
from training import data as datasets
from training import degrade, distributed, runlog
from training.errors import UsageError, reported_as_exit
from training.options import option, parse_options
from training.quality import batch_scores


@dataclass
class LoopOptions:
    """The options every training command has; each command's ``Options`` extends them
    (and may give a field another default)."""
    out: str = option("runs/train", "run folder for checkpoints, logs and metrics")
    data: Optional[str] = option(None, "folder of sharp images (recursive); default: scikit-image's photos")
    paired: Optional[list[str]] = option(None, "BLUR_DIR SHARP_DIR, pairs by file name", nargs=2,
                                         metavar=("BLUR_DIR", "SHARP_DIR"))
    resize: Optional[int] = option(None, "paired mode: resize both to R×R first (original protocol: 256)")
    degradation: str = option("webcam", "synthetic degradation preset", choices=sorted(degrade.PRESETS))
    crop: Optional[int] = option(None, "training crop size (default: 256 on CUDA, 128 on CPU)")
    crops_per_image: int = option(16, "random crops per image per epoch")
    val_fraction: float = option(0.15, "share of files held out for validation (by name hash)")
    batch_size: Optional[int] = option(None, "batch size per process")
    max_steps: Optional[int] = option(None, "stop after this many steps (smoke runs)")
    lr: float = option(1e-4, "peak learning rate")
    min_lr: float = option(1e-6, "learning rate at the end of the cosine")
    warmup: int = option(0, "linear warm-up steps")
    grad_clip: float = option(0.0, "max gradient norm (0: no clipping)")
    eval_every: int = option(500, "validate every N steps")
    ckpt_every: int = option(500, "write OUT/last.pt every N steps")
    log_every: int = option(10, "log the training loss every N steps")
    resume: bool = option(False, "continue from OUT/last.pt")
    device: str = option("auto", "cpu, cuda or auto", choices=["cpu", "cuda", "auto"])
    bf16: Optional[bool] = option(None, "bf16 autocast (default: on with CUDA)")
    compile: bool = option(False, "torch.compile the model (CUDA)")
    workers: Optional[int] = option(None, "DataLoader workers (default: 8 on CUDA, 0 on CPU)")
    seed: int = option(0, "seed for crops, degradations, order and initial weights")


@dataclass
class Stage:
    """A stretch of steps on one dataset. The teacher's progressive patch sizes are
    several stages; distillation is one."""
    first_step: int
    end_step: int
    dataset: Dataset
    batch_size: int
    seed: int
    workers: int
    name: str = ""  # announced when the stage starts, e.g. "128×128 crops"

    def steps_per_epoch(self, world: int) -> int:
        return datasets.RunSampler(len(self.dataset), self.seed, self.batch_size, world=world).batches_per_epoch



@dataclass
class Objective:
    """loss = α · L1(prediction, sharp) + β · L1(prediction, teacher label) [+ γ · relative MSE].

    A batch is ``(input, sharp)``, or ``(input,)`` without ground truth; with a teacher
    cache the label rides along as the batch's last tensor, otherwise ``teacher`` makes it.

    With an ``anchor`` (a frozen student) a batch is ``(input, sharp, kept)``: for each
    crop whose ``kept`` is 1 the "sharp" label is the anchor's own output instead, so
    those crops pull the student towards what the anchor does there and only the others
    (``kept`` 0, labelled by the sharp photo) teach it anything new.

    ``mse`` γ > 0 adds each crop's squared error relative to its input's,
    MSE(prediction, sharp) / (MSE(input, sharp) + ε²), averaged over crops (ε =
    ``mse_floor``). Pooled errors let the strongly degraded crops, whose errors are ten
    times larger, set the gradient; held-out quality is a mean of per-image dB, which
    counts a mildly soft frame as much as a very soft one, and so does this term.
    """
    alpha: float = 1.0
    beta: float = 0.0
    teacher: Optional[torch.nn.Module] = None
    has_sharp: bool = True
    mse: float = 0.0
    mse_floor: float = 0.005
    anchor: Optional[torch.nn.Module] = None

    def relative_mse(self, prediction, degraded, sharp) -> torch.Tensor:
        error = ((prediction - sharp) ** 2).mean(dim=(1, 2, 3))
        input_error = ((degraded - sharp) ** 2).mean(dim=(1, 2, 3))
        return (error / (input_error + self.mse_floor ** 2)).mean()

    def losses(self, prediction: torch.Tensor, batch, device: torch.device, bf16: bool) -> dict:
        zero = prediction.new_zeros(())
        sharp, relative = zero, zero
        if self.has_sharp:
            target = batch[1].to(device, non_blocking=True)
            if self.anchor is not None:
                with torch.no_grad():
                    kept = self.anchor(batch[0].to(device, non_blocking=True)).float()
                target = torch.lerp(target, kept, batch[2].to(device, non_blocking=True))
            sharp = F.l1_loss(prediction, target)
            if self.mse > 0:
                relative = self.relative_mse(prediction, batch[0].to(device, non_blocking=True), target)
        if self.beta == 0:  # ground truth alone: running the teacher would be wasted work
            teacher = zero
        elif self.teacher is None:
            teacher = F.l1_loss(prediction, batch[-1].to(device, non_blocking=True))
        else:
            with torch.no_grad(), distributed.autocast(device, bf16):
                label = self.teacher(batch[0].to(device, non_blocking=True)).float()
            teacher = F.l1_loss(prediction, label)
        return dict(loss=self.alpha * sharp + self.beta * teacher + self.mse * relative,
                    loss_sharp=sharp, loss_teacher=teacher, loss_relative_mse=relative)


@dataclass
class Validation:
    """Fixed held-out crops, what they are scored against, and the scores of the baselines."""
    inputs: torch.Tensor
    reference: torch.Tensor
    baseline: dict


@dataclass
class Outcome:
    """What ``train`` hands back to the command for its metrics."""
    steps: int
    seconds: float
    samples_per_s: float
    final: Optional[dict]
    records: list[dict]  # the whole log, training and validation records

    @property
    def history(self) -> list[dict]:
        return [r for r in self.records if r["kind"] == "val"]


class TrainingStopped(Exception):
    """Ctrl-C or SIGTERM: the run saved OUT/last.pt and can continue with ``--resume``."""


def run_command(options_class, run, argv, description: str) -> dict:
    """A training command's ``main``: parse the options, join DDP if launched by torchrun,
    run, and turn a ``UsageError`` or a stop into one line and a non-zero exit."""
    opts = parse_options(options_class, argv, description)
    with reported_as_exit():
        runtime = distributed.setup(opts.device)
        try:
            return run(opts, runtime)
        except TrainingStopped as e:
            raise SystemExit(str(e)) from None
        finally:
            distributed.teardown(runtime)


def start(opts: LoopOptions, runtime: distributed.Runtime) -> tuple[Path, bool]:
    """Run folder, bf16 choice and the default crop; seeds torch and allows TF32 on CUDA."""
    device = runtime.device
    if opts.crop is None:
        opts.crop = datasets.default_crop(device, announce=runtime.is_main)
    torch.manual_seed(opts.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return Path(opts.out), (opts.bf16 if opts.bf16 is not None else device.type == "cuda")


@torch.no_grad()
def predict(network: torch.nn.Module, inputs: torch.Tensor, batch_size: int, device: torch.device,
            bf16: bool) -> torch.Tensor:
    outs = []
    for chunk in inputs.split(max(1, batch_size)):
        with distributed.autocast(device, bf16):
            outs.append(network(chunk.to(device)).float().cpu())
    return torch.cat(outs)


def prepare_validation(val_batch: tuple, *, teacher: Optional[torch.nn.Module], has_sharp: bool,
                       runtime: distributed.Runtime, batch_size: int, bf16: bool,
                       held_out_files: int) -> Optional[Validation]:
    """Scores the degraded input (and the teacher, if there is one) once; without ground
    truth the teacher's output is the reference."""
    if not (runtime.is_main and val_batch):
        return None
    inputs = val_batch[0]
    teacher = predict(teacher, inputs, batch_size, runtime.device, bf16) if teacher is not None else None
    if not has_sharp and teacher is None:
        raise UsageError("validation without ground truth needs a teacher to score against; pass --teacher")
    reference = val_batch[1] if has_sharp else teacher
    baseline = {}
    baseline["input_psnr"], baseline["input_ssim"] = batch_scores(reference, inputs)
    if has_sharp and teacher is not None:
        baseline["teacher_psnr"], baseline["teacher_ssim"] = batch_scores(reference, teacher)
    against = "sharp" if has_sharp else "teacher output (no ground truth)"
    print(f"validation: {len(inputs)} crops from {held_out_files} held-out files, against {against}; "
          f"degraded input PSNR {baseline['input_psnr']:.2f} dB SSIM {baseline['input_ssim']:.4f}",
          file=sys.stderr)
    return Validation(inputs, reference, baseline)


def validate(model: torch.nn.Module, validation: Optional[Validation], log: Optional[runlog.JsonLog],
             step: int, epoch: float, batch_size: int, device: torch.device, bf16: bool) -> Optional[dict]:
    if validation is None:
        return None
    model.eval()
    psnr, ssim = batch_scores(validation.reference, predict(model, validation.inputs, batch_size, device, bf16))
    model.train()
    record = dict(kind="val", step=step, epoch=epoch, psnr=psnr, ssim=ssim, **validation.baseline)
    log.write(**record)
    tqdm.write(f"step {step}: validation PSNR {psnr:.2f} dB SSIM {ssim:.4f} "
               f"(degraded input {validation.baseline['input_psnr']:.2f} dB)", file=sys.stderr)
    return record


def save(out: Path, weights_name: str, model: torch.nn.Module, optimizer, scheduler, step: int,
         meta: dict) -> None:
    """OUT/last.pt with everything ``--resume`` needs, and the weights alone as OUT/<weights_name>."""
    meta = dict(meta, step=step)
    train_state = dict(step=step, optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                       rng=runlog.rng_state())
    save_checkpoint(out / "last.pt", arch=model.arch, config=model.config, state_dict=model.state_dict(),
                    meta=meta, train_state=train_state)
    save_checkpoint(out / weights_name, arch=model.arch, config=model.config, state_dict=model.state_dict(),
                    meta=meta)


def stage_loader(stage: Stage, step: int, runtime: distributed.Runtime,
                 device: torch.device) -> torch.utils.data.DataLoader:
    """The stage's batches from `step` on, this rank's share, resuming mid-epoch exactly."""
    per_epoch = stage.steps_per_epoch(runtime.world)
    if per_epoch == 0:
        raise UsageError(f"{len(stage.dataset)} training crops are fewer than one batch of {stage.batch_size} "
                         "per process; lower --batch-size or raise --crops-per-image")
    local = step - stage.first_step
    sampler = datasets.RunSampler(len(stage.dataset), stage.seed, stage.batch_size, rank=runtime.rank,
                                  world=runtime.world, start_epoch=local // per_epoch,
                                  end_epoch=-(-(stage.end_step - stage.first_step) // per_epoch),
                                  skip_batches=local % per_epoch)
    return datasets.make_loader(stage.dataset, sampler, stage.batch_size, device, stage.workers)


def train(opts: LoopOptions, runtime: distributed.Runtime, *, command: str, weights_name: str,
          model: torch.nn.Module, model_name: str, optimizer: torch.optim.Optimizer, scheduler,
          stages: list[Stage], objective: Objective, validation: Optional[Validation], bf16: bool,
          meta: dict, forward_model: Optional[torch.nn.Module] = None) -> Outcome:
    """Trains `model` (what is validated and saved); the loss goes through `forward_model`
    when one is given (a wrapper that shares `model`'s weights, e.g. an Int8Simulation)."""
    device, main_process, out = runtime.device, runtime.is_main, Path(opts.out)
    total_steps = stages[-1].end_step
    step = (runlog.resume(out / "last.pt", model, optimizer, scheduler, what=model_name,
                          verbose=main_process) if opts.resume else 0)
    log = runlog.JsonLog(out / "log.jsonl", resume_step=step) if main_process else None

    network = forward_model if forward_model is not None else model
    network = torch.compile(network) if opts.compile else network
    if runtime.distributed:
        network = torch.nn.parallel.DistributedDataParallel(
            network, device_ids=[runtime.local_rank] if device.type == "cuda" else None)

    model.train()
    bar = tqdm(total=total_steps, initial=step, desc=command, unit="step", disable=not main_process,
               dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else 30.0)
    started, samples_seen, sums, logged = time.time(), 0, {}, 0
    stop = distributed.StopRequest(runtime)
    for index, stage in enumerate(stages):
        if step >= stage.end_step or stop.flag:
            continue
        if main_process and len(stages) > 1:
            tqdm.write(f"stage {index + 1}/{len(stages)}: {stage.name}, batch {stage.batch_size}",
                       file=sys.stderr)
        per_epoch = stage.steps_per_epoch(runtime.world)
        validate_every = opts.eval_every or per_epoch  # 0: at the end of every epoch
        for batch in stage_loader(stage, step, runtime, device):
            if step >= stage.end_step or stop.requested():
                break
            with distributed.autocast(device, bf16):
                prediction = network(batch[0].to(device, non_blocking=True)).float()
            losses = objective.losses(prediction, batch, device, bf16)
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            if opts.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), opts.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            epoch = (step - stage.first_step) / per_epoch
            samples_seen += batch[0].shape[0] * runtime.world
            sums = {k: sums.get(k, 0.0) + v.item() for k, v in losses.items()}
            logged += 1
            rate = samples_seen / max(1e-9, time.time() - started)
            bar.set_postfix(loss=f"{losses['loss'].item():.4f}", samples_s=f"{rate:.1f}", refresh=False)
            bar.update(1)
            if step % opts.log_every == 0 or step == total_steps or step == 1:
                # Every rank takes part in the mean; under DDP the logged loss is that of
                # the whole batch, not of rank 0's share.
                means = {k: distributed.mean_over_ranks(v / logged, runtime) for k, v in sums.items()}
                if main_process:
                    log.write(kind="train", step=step, epoch=epoch, **means, samples_per_s=rate,
                              lr=optimizer.param_groups[0]["lr"], batch=batch[0].shape[0] * runtime.world,
                              crop=batch[0].shape[-1])
                sums, logged = {}, 0
            if step % validate_every == 0 and step != total_steps:
                validate(model, validation, log, step, epoch, opts.batch_size, device, bf16)
            if main_process and step % opts.ckpt_every == 0 and step != total_steps:
                save(out, weights_name, model, optimizer, scheduler, step, meta)
    bar.close()
    stop.restore()
    if step < total_steps:
        if main_process:
            save(out, weights_name, model, optimizer, scheduler, step, meta)
        raise TrainingStopped(f"stopped at step {step}: {out / 'last.pt'} saved; continue with --resume")

    last_stage = stages[-1]
    final = validate(model, validation, log, step,
                     (step - last_stage.first_step) / last_stage.steps_per_epoch(runtime.world), opts.batch_size,
                     device, bf16)
    if main_process:
        save(out, weights_name, model, optimizer, scheduler, step, meta)
    elapsed = time.time() - started
    return Outcome(step, elapsed, samples_seen / max(1e-9, elapsed), final, log.records if log else [])


def finish(out: Path, outcome: Outcome, *, command: str, plot_title: str, runtime: distributed.Runtime,
           source: datasets.DataSource, validation: Optional[Validation], opts: LoopOptions,
           **specific) -> dict:
    """Writes OUT/metrics.json (what every run reports, then the command's own fields) and
    OUT/loss.png; returns the metrics."""
    result = dict(command=command, steps=outcome.steps, world_size=runtime.world, seconds=outcome.seconds,
                  samples_per_s=outcome.samples_per_s, device=str(runtime.device),
                  data=dict(kind=source.kind, train_files=len(source.train_files),
                            val_files=len(source.val_files)),
                  **specific,
                  validation=dict(baseline=validation.baseline if validation else {}, final=outcome.final,
                                  history=outcome.history),
                  environment=runlog.environment(),
                  options=dataclasses.asdict(opts))
    runlog.write_json(out / "metrics.json", result)
    runlog.plot_curves(outcome.records, out / "loss.png", plot_title)
    return result
