"""What a band-gain student could do, and where its gains sit: ``python -m training.band_oracle``.

For each held-out row, on the frames as sharpcam sees them (rounded to 8 bits):
- the *fixed-gain oracle*: one gain per band of the student's own `LumaBands`, the same
  for every pixel of every photo in the row, fitted by least squares against the sharp
  photos (content-blind, but it knows the row). What the bands can express at all;
- the student's own PSNR and the mean and spatial spread of each gain map it predicts;
- the *offset oracle*: the constant per-band gains that, added to the student's, fit the
  sharp photos best, and the PSNR they reach. A large offset on a row says the student
  holds back (or overdoes) that degradation as a whole, not pixel by pixel.

Rows, photos and degradations are `training.evaluate`'s, so the numbers sit beside its
table. Writes OUT/report.json and OUT/report.md.
"""
from __future__ import annotations

import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from models import CheckpointError, load_student
from sharpcam import DEFAULT_MODEL
from sharpcam.atomic_file import write_atomically
from training import data as datasets
from training import degrade
from training.errors import UsageError, reported_as_exit
from training.evaluate import build_pairs, padded_batch
from training.options import option, parse_options
from training.quality import psnr
from training.runlog import write_json

ROWS = list(degrade.COMPONENTS)


@dataclass
class Options:
    """Fixed-gain and offset oracles for a band-gain student on held-out photos."""
    student: Optional[str] = option(None, "band-gain student (.onnx or student.pt); default: the one "
                                          "sharpcam ships")
    data: Optional[str] = option(None, "folder whose held-out split is used; default: scikit-image's photos")
    val_fraction: float = option(0.15, "the split used in training (by name hash)")
    rows: Optional[list[str]] = option(None, "only these rows (default: every degradation)", choices=ROWS)
    max_images: Optional[int] = option(None, "at most this many held-out images (smoke runs)")
    seed: int = option(0, "seed of the random parts of degradations, as training.evaluate's")
    out: str = option("runs/band_oracle", "folder for report.json and report.md")


def least_squares_gains(pairs: list[tuple[np.ndarray, np.ndarray]], bands: list[np.ndarray]) -> np.ndarray:
    """The gains g minimising Σ ‖target − start − Σₖ gₖ·bandₖ‖² over all photos, where each
    pair is (start, target) H×W×3 and each entry of `bands` is a K×H×W stack of luma bands,
    added to R, G and B alike (as the student adds them)."""
    k = bands[0].shape[0]
    normal, rhs = np.zeros((k, k)), np.zeros(k)
    for (start, target), stack in zip(pairs, bands):
        flat = stack.reshape(k, -1).astype(np.float64)
        residual = (target.astype(np.float64) - start).sum(axis=2).reshape(-1)
        normal += 3 * flat @ flat.T
        rhs += flat @ residual
    return np.linalg.lstsq(normal, rhs, rcond=None)[0]


def with_gains(start: np.ndarray, stack: np.ndarray, gains: np.ndarray) -> np.ndarray:
    detail = np.tensordot(gains, stack, axes=1)
    return np.clip(start + detail[..., None], 0, 1)


class BandStudent:
    """The student's output, its bands and its gain maps for one frame."""

    def __init__(self, model: torch.nn.Module):
        if getattr(model, "bands", None) is None:
            raise UsageError("this student paints pixels; the band oracle needs a band-gain student "
                             "(a preset with bands, like realtime)")
        self.model = model
        self._gains = None
        model.head.register_forward_hook(lambda module, inputs, output: setattr(self, "_gains", output))

    @torch.no_grad()
    def __call__(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(output H×W×3, bands K×H×W, gain maps K×h×w at the UNet's resolution)."""
        h, w = frame.shape[:2]
        x = padded_batch(frame, self.model.size_multiple)
        out = datasets.to_image(self.model(x)[0, :, :h, :w])
        bands = torch.cat(self.model.bands(self.model.luma(x)), dim=1)[0, :, :h, :w].numpy()
        return out, bands, self._gains[0].numpy()


def oracle_row(student: BandStudent, frames: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    """One row's oracles; `frames` are training.evaluate's (8-bit frame, sharp photo) pairs."""
    runs = [student(frame) for frame, _ in frames]
    bands = [stack for _, stack, _ in runs]
    fixed = least_squares_gains(frames, bands)
    outputs = [(out, sharp) for (out, _, _), (_, sharp) in zip(runs, frames)]
    offset = least_squares_gains(outputs, bands)
    gains = np.stack([maps.reshape(maps.shape[0], -1).mean(axis=1) for _, _, maps in runs])
    spreads = np.stack([maps.reshape(maps.shape[0], -1).std(axis=1) for _, _, maps in runs])
    return {
        "input": statistics.fmean(psnr(sharp, frame) for frame, sharp in frames),
        "fixed_gains": fixed.tolist(),
        "fixed": statistics.fmean(psnr(sharp, with_gains(frame, stack, fixed))
                                  for (frame, sharp), stack in zip(frames, bands)),
        "student": statistics.fmean(psnr(sharp, out) for out, sharp in outputs),
        "student_gain_mean": gains.mean(axis=0).tolist(),
        "student_gain_spread": spreads.mean(axis=0).tolist(),
        "offset_gains": offset.tolist(),
        "student_plus_offset": statistics.fmean(psnr(sharp, with_gains(out, stack, offset))
                                                for (out, sharp), stack in zip(outputs, bands)),
    }


def report_markdown(report: dict) -> str:
    def gains(values):
        return ", ".join(f"{v:+.2f}" for v in values)
    lines = [f"# Band oracle: {report['student']}", "",
             f"{report['images']} held-out photos, whole, rounded to 8 bits; PSNR dB; gains per band "
             f"(box sizes {report['bands']}).", "",
             "| row | input | fixed gains | fixed-gain oracle | student | student's gains, mean (spread) "
             "| offset | student + offset |",
             "|---|---|---|---|---|---|---|---|"]
    for row, r in report["rows"].items():
        spread = ", ".join(f"{m:+.2f} ({s:.2f})" for m, s in zip(r["student_gain_mean"], r["student_gain_spread"]))
        lines.append(f"| {row} | {r['input']:.2f} | {gains(r['fixed_gains'])} | {r['fixed']:.2f} | "
                     f"{r['student']:.2f} | {spread} | {gains(r['offset_gains'])} | {r['student_plus_offset']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    opts = parse_options(Options, argv, __doc__.splitlines()[0])
    with reported_as_exit():
        return run(opts)


def run(opts: Options) -> dict:
    path = Path(opts.student or DEFAULT_MODEL)
    if not path.is_file():
        raise UsageError(f"--student {path} not found; pass a student .onnx or student.pt")
    try:
        model = load_student(path)
    except CheckpointError as e:
        raise UsageError(f"--student: {e}") from None
    student = BandStudent(model)
    source = datasets.load_source(data=opts.data, val_fraction=opts.val_fraction)
    images = source.val_images[:opts.max_images] if opts.max_images else source.val_images
    if not images:
        raise UsageError("the data has no held-out images (it needs at least two files); "
                         "pass --data with more images")
    rows = opts.rows or ROWS
    report = {"student": str(path), "images": len(images), "bands": model.config["bands"],
              "rows": {}, "options": asdict(opts)}
    for row in rows:
        report["rows"][row] = oracle_row(student, build_pairs(images, 0, [row], opts.seed)[row])
        r = report["rows"][row]
        print(f"{row}: input {r['input']:.2f}, fixed-gain oracle {r['fixed']:.2f}, student {r['student']:.2f}, "
              f"student + offset {r['student_plus_offset']:.2f}", file=sys.stderr)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "report.json", report)
    write_atomically(out / "report.md", report_markdown(report).encode())
    print(f"wrote {out / 'report.json'}, {out / 'report.md'}", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
