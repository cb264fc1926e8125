"""Precomputed teacher outputs for CPU distillation (``--teacher-cache DIR``).

A Restormer is seconds per crop on a CPU, so instead of running it on every batch
the teacher labels a fixed pool of degraded crops once; the pool is reused across
epochs and runs. The file name is a hash of everything the outputs depend on —
teacher weights, data files, degradation, crop, resize, seed and pool size — so a
changed input gives a different key and a stale cache is never read.
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import torch
from torch.utils.data import Dataset

from sharpcam.atomic_file import write_atomically


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_key(*, teacher_path: Path, data: dict, degradation: str, crop: int, resize: int | None,
              seed: int, pool: int, ensemble: bool = False) -> str:
    spec = dict(version=1, teacher=file_digest(teacher_path), data=data, degradation=degradation,
                crop=crop, resize=resize, seed=seed, pool=pool)
    if ensemble:  # only when on, so caches of single-pass labels keep their keys
        spec["ensemble"] = "x8"
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:24]


def cache_path(folder: Path, key: str) -> Path:
    return Path(folder) / f"teacher-{key}.pt"


def load_pool(path: Path) -> dict[str, torch.Tensor] | None:
    if not path.is_file():
        return None
    try:
        pool = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a damaged cache is only a miss: it is rebuilt
        return None
    return pool if isinstance(pool, dict) and "inputs" in pool and "teacher" in pool else None


@torch.no_grad()
def build_pool(dataset: Dataset, teacher: torch.nn.Module, size: int, device: torch.device,
               batch_size: int = 4, progress=None) -> dict[str, torch.Tensor]:
    """Samples with keys 0..size-1 (epoch 0) and the teacher's output for each."""
    samples = [dataset[i % len(dataset)] for i in range(size)]
    inputs = torch.stack([s[0] for s in samples])
    pool = {"inputs": inputs}
    if len(samples[0]) > 1:
        pool["sharp"] = torch.stack([s[1] for s in samples])
    outputs = []
    for start in range(0, size, batch_size):
        batch = inputs[start:start + batch_size].to(device)
        outputs.append(teacher(batch).float().clamp(0, 1).cpu())
        if progress:
            progress(len(batch))
    pool["teacher"] = torch.cat(outputs)
    return pool


def save_pool(path: Path, pool: dict[str, torch.Tensor]) -> None:
    buffer = io.BytesIO()
    torch.save(pool, buffer)
    write_atomically(path, buffer.getvalue())


class CachedPool(Dataset):
    """Items ``(input, sharp, teacher)`` — or ``(input, teacher)`` without ground truth."""

    def __init__(self, pool: dict[str, torch.Tensor]):
        self.pool = pool
        self.has_sharp = "sharp" in pool

    def __len__(self) -> int:
        return len(self.pool["inputs"])

    def __getitem__(self, key: int):
        i = int(key) % len(self)
        if self.has_sharp:
            return self.pool["inputs"][i], self.pool["sharp"][i], self.pool["teacher"][i]
        return self.pool["inputs"][i], self.pool["teacher"][i]
