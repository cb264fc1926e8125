"""What a training run leaves in its folder besides checkpoints: ``log.jsonl`` (one
record per logged step or evaluation), ``metrics.json`` and ``loss.png``; plus the RNG
state a resumed run restores. All files are written atomically or appended line by line.
"""
from __future__ import annotations

import io
import json
import sys
import random
from pathlib import Path

import numpy as np
import torch

from sharpcam.atomic_file import write_atomically
from models.checkpoint import CheckpointError, load_checkpoint
from training.errors import UsageError


# The vector instructions that decide in which order a CPU's kernels sum: the same
# command on one thread can train other weights on an AVX-512 machine than on an AVX2 one.
VECTOR_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")


def environment() -> dict:
    """What a run's weights depend on besides its command and data: the versions of the
    libraries that draw and degrade its crops and train it, and the CPU's vector
    instructions. Two runs of one command agree bit for bit only where these agree."""
    import platform

    import cv2
    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                cpu = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass  # not Linux: the processor's name is all there is
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "opencv": cv2.__version__, "cpu": cpu, "cpu_vector": [f for f in VECTOR_FLAGS if f in flags]}


def write_json(path: Path, obj) -> None:
    write_atomically(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())


class JsonLog:
    """Append-only ``log.jsonl``; on resume, records after the resumed step are dropped."""

    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = Path(path)
        self.records: list[dict] = []
        if resume_step is not None and self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by the interruption
                if rec.get("step", 0) <= resume_step:
                    self.records.append(rec)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(self.path, "".join(json.dumps(r) + "\n" for r in self.records).encode())

    def write(self, **record) -> None:
        self.records.append(record)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def rng_state() -> dict:
    """Python, NumPy and torch RNG states as plain values (weights_only-loadable)."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
    }


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def plot_curves(records: list[dict], path: Path, title: str) -> None:
    """Training losses per step and validation PSNR per evaluation, as ``loss.png``."""
    # Here, not at the top: pyplot takes a second to import and only the end of a run draws.
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if r.get("kind") == "train"]
    val = [r for r in records if r.get("kind") == "val"]
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 3.8))
    for key in sorted({k for r in train for k in r if k.startswith("loss")}):
        points = [(r["step"], r[key]) for r in train if key in r]
        ax_loss.plot(*zip(*points), label=key.replace("_", " "))
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("L1")
    ax_loss.set_yscale("log")
    ax_loss.legend()
    ax_loss.set_title(f"{title}: training loss")
    if val:
        ax_val.plot([r["step"] for r in val], [r["psnr"] for r in val], "o-", label="model")
        if "input_psnr" in val[0]:
            ax_val.axhline(val[0]["input_psnr"], color="gray", ls="--", label="degraded input")
        ax_val.legend()
    ax_val.set_xlabel("step")
    ax_val.set_ylabel("PSNR (dB)")
    ax_val.set_title("validation (held-out files)")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    write_atomically(path, buffer.getvalue())


def resume(last: Path, model, optimizer, scheduler=None, *, what: str, verbose: bool = True) -> int:
    """Restore weights, optimizer (and scheduler) state and RNG from ``last``; returns the
    step to continue from, 0 when there is nothing to resume yet."""
    if not last.is_file():
        if verbose:
            print(f"note: --resume but no {last} yet; starting from scratch", file=sys.stderr)
        return 0
    try:
        ckpt = load_checkpoint(last)
    except CheckpointError as e:
        raise UsageError(f"cannot resume: {e}") from None
    if ckpt["config"] != model.config:
        raise UsageError(f"{last} holds a different {what} ({ckpt['config']}); "
                         "use the same model options or another --out")
    model.load_state_dict(ckpt["state_dict"])
    state = ckpt["train_state"]
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and "scheduler" in state:
        scheduler.load_state_dict(state["scheduler"])
    restore_rng(state["rng"])
    step = int(state["step"])
    if verbose:
        print(f"resuming from {last} at step {step}", file=sys.stderr)
    return step
