"""Device choice and DistributedDataParallel setup shared by the training commands.

Launched by ``torchrun`` (RANK/WORLD_SIZE/LOCAL_RANK in the environment) the process
joins a process group — NCCL on CUDA, gloo on CPU; otherwise it is a single process
of world size 1. Only rank 0 (``is_main``) writes checkpoints, logs and bars.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from dataclasses import dataclass

import torch
import torch.distributed as dist

from training.errors import UsageError


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def resolve_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda but no CUDA GPU is visible to PyTorch; "
                         "use --device cpu (or auto), or install a CUDA build of torch")
    if choice not in ("cpu", "cuda"):
        raise UsageError(f"--device {choice!r} is not one of cpu, cuda, auto")
    return torch.device(choice)


def setup(device_choice: str) -> Runtime:
    device = resolve_device(device_choice)
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return Runtime(device)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        try:  # device_id binds the communicator eagerly (torch >= 2.3); older torch lacks it
            dist.init_process_group("nccl", device_id=device)
        except TypeError:
            dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    return Runtime(device, rank, world, local_rank)


def teardown(runtime: Runtime) -> None:
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()


def mean_over_ranks(value: float, runtime: Runtime) -> float:
    if not runtime.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=runtime.device)
    dist.all_reduce(t)
    return float(t.item()) / runtime.world


def barrier(runtime: Runtime) -> None:
    if runtime.distributed:
        dist.barrier()


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on CUDA when asked; a no-op context elsewhere."""
    if bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class StopRequest:
    """Ctrl-C / SIGTERM ask the loop to stop at the next step boundary, so the run
    saves a consistent checkpoint (never half an optimizer step) and can ``--resume``.
    Under DDP the ranks agree on the stop, so none is left waiting in an all-reduce."""

    def __init__(self, runtime: Runtime):
        self.runtime, self.flag = runtime, False
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._request)

    def _request(self, signum, frame):
        self.flag = True

    def requested(self) -> bool:
        if not self.runtime.distributed:
            return self.flag
        t = torch.tensor([1.0 if self.flag else 0.0], device=self.runtime.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
