"""Held-out evaluation: ``python -m training.evaluate``.

For each degradation preset — ``clean`` (none), ``seed`` (Gaussian σ 0.5, the original
data) and every ``webcam`` component at a fixed strength — PSNR and SSIM against the
sharp image of: the degraded input, an unsharp mask, the teacher, the student in
PyTorch and the student as ONNX run exactly as sharpcam runs it (uint8 BGR frame,
its tiler, its onnxruntime engine). Images are the validation split of the data
(never trained on); by default scikit-image's held-out photos. Speed: ms per
256×256 tile and frames/s at 1280×720 for the ONNX student on CPU.
Writes OUT/report.json, OUT/report.md and OUT/grid.png (input | student | teacher | sharp).
"""
from __future__ import annotations

import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import cv2
import numpy as np
import torch

from training import data as datasets
from training import degrade, distributed
from training.options import option, parse_options
from training.quality import psnr, ssim, unsharp_mask
from models.atomic_file import write_atomically
from training.runlog import write_json

Restorer = Callable[[np.ndarray], np.ndarray]  # H×W×3 float RGB [0, 1] -> same
PRESETS = ["clean", "seed", *degrade.COMPONENTS]


@dataclass
class Options:
    """Evaluate the student against baselines on held-out images."""
    out: str = option("runs/evaluate", "folder for report.json, report.md and grid.png")
    student: str = option("runs/distill/student.onnx", "student ONNX file")
    student_pt: Optional[str] = option(None, "student PyTorch checkpoint (default: student.pt beside the ONNX)")
    teacher: Optional[str] = option(None, "teacher weights (default: checkpoints/motion_deblurring.pth if present)")
    data: Optional[str] = option(None, "folder whose held-out split is used; default: scikit-image's photos")
    paired: Optional[list[str]] = option(None, "BLUR_DIR SHARP_DIR: adds a 'paired' row on the held-out pairs",
                                         nargs=2, metavar=("BLUR_DIR", "SHARP_DIR"))
    val_fraction: float = option(0.15, "the split used in training (by name hash)")
    crop: int = option(256, "evaluate on the centre crop of this size of each image")
    max_steps: Optional[int] = option(None, "evaluate at most this many images (smoke runs)")
    threads: int = option(2, "onnxruntime CPU threads for the speed measurement and the ONNX student")
    speed_repeats: int = option(10, "timed runs per speed measurement")
    device: str = option("auto", "device for the PyTorch models", choices=["cpu", "cuda", "auto"])
    seed: int = option(0, "seed of the random parts of degradations (noise)")


# --- restorers -------------------------------------------------------------------------


def identity(image: np.ndarray) -> np.ndarray:
    return image


def torch_restorer(model: torch.nn.Module, device: torch.device) -> Restorer:
    multiple = getattr(model, "size_multiple", 8)

    @torch.no_grad()
    def restore(image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        x = datasets.to_tensor(image)[None].to(device)
        ph, pw = (-h) % multiple, (-w) % multiple
        if ph or pw:
            x = torch.nn.functional.pad(x, (0, pw, 0, ph), mode="reflect")
        return datasets.to_image(model(x)[0, :, :h, :w])
    return restore


def sharpcam_restorer(engine, tile: int = 256) -> Restorer:
    """The ONNX student as sharpcam runs it: a uint8 BGR frame through its tiler and engine."""
    from sharpcam.tiling import Tiler

    def restore(image: np.ndarray) -> np.ndarray:
        frame = cv2.cvtColor(np.round(image * 255).astype(np.uint8), cv2.COLOR_RGB2BGR)
        tiler = Tiler(frame.shape[0], frame.shape[1], tile=tile, receptive_radius=engine.receptive_radius,
                      size_multiple=engine.size_multiple)
        out = tiler.from_batch(engine.run(tiler.to_batch(frame)))
        return np.clip(out.transpose(1, 2, 0), 0, 1).astype(np.float32)
    return restore


# --- evaluation ------------------------------------------------------------------------


def degrade_for(preset: str, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if preset == "clean":
        return image
    if preset == "seed":
        return degrade.seed_preset(image, rng)
    return degrade.component(preset)(image, rng)


def evaluate(pairs: dict[str, list[tuple[np.ndarray, np.ndarray]]],
             restorers: dict[str, Restorer]) -> dict[str, dict[str, dict[str, float]]]:
    """{preset: {method: {"psnr", "ssim"}}} — means over images; ``input`` is always included."""
    table: dict = {}
    for preset, samples in pairs.items():
        scores: dict[str, list[tuple[float, float]]] = {"input": []}
        for degraded, sharp in samples:
            scores["input"].append((psnr(sharp, degraded), ssim(sharp, degraded)))
            for name, restore in restorers.items():
                restored = restore(degraded)
                scores.setdefault(name, []).append((psnr(sharp, restored), ssim(sharp, restored)))
        table[preset] = {name: {"psnr": statistics.fmean(s[0] for s in values),
                                "ssim": statistics.fmean(s[1] for s in values)}
                         for name, values in scores.items()}
    return table


def build_pairs(images: list[np.ndarray], crop: int, presets: list[str], seed: int):
    crops = [datasets.center_crop(im, crop) for im in images]
    return {preset: [(degrade_for(preset, c, np.random.default_rng([seed, i])), c)
                     for i, c in enumerate(crops)] for preset in presets}


def measure_speed(engine, repeats: int) -> dict:
    """Median ms per 256×256 tile, and 1280×720 frames/s the way sharpcam's auto tiling picks."""
    from sharpcam.tiling import Tiler

    def median_ms(fn) -> float:
        fn()  # first runs allocate
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1000)
        return statistics.median(times)

    tile = np.random.default_rng(0).random((1, 3, 256, 256), dtype=np.float32)
    result = {"tile_256_ms": median_ms(lambda: engine.run(tile))}
    frame = (np.random.default_rng(0).random((720, 1280, 3)) * 255).astype(np.uint8)
    for name, size in (("tiled_256", 256), ("whole_frame", 0)):
        tiler = Tiler(720, 1280, tile=size, receptive_radius=engine.receptive_radius,
                      size_multiple=engine.size_multiple)
        ms = median_ms(lambda: tiler.from_batch(engine.run(tiler.to_batch(frame))))
        result[f"720p_{name}_ms"] = ms
    best = min(result["720p_tiled_256_ms"], result["720p_whole_frame_ms"])
    result["720p_fps"] = 1000.0 / best
    return result


# --- outputs ---------------------------------------------------------------------------

METHOD_TITLES = {"input": "degraded input", "unsharp": "unsharp mask", "teacher": "teacher",
                 "student_torch": "student (torch)", "student_onnx": "student (ONNX)"}


def report_markdown(report: dict) -> str:
    methods = [m for m in METHOD_TITLES if any(m in row for row in report["table"].values())]
    lines = ["# SharpCam held-out evaluation",
             "",
             f"{report['images']} held-out images ({report['source']}), centre {report['crop']}×"
             f"{report['crop']} crops; PSNR (dB) / SSIM against the sharp image, mean over images "
             f"(PSNR of identical images is capped at 100 dB).",
             "",
             "| preset | " + " | ".join(METHOD_TITLES[m] for m in methods) + " |",
             "|---|" + "---|" * len(methods)]
    for preset, row in report["table"].items():
        best = max((row[m]["psnr"] for m in methods if m in row and m != "input"), default=None)
        cells = []
        for m in methods:
            if m not in row:
                cells.append("—")
                continue
            cell = f"{row[m]['psnr']:.2f} / {row[m]['ssim']:.4f}"
            cells.append(f"**{cell}**" if m != "input" and row[m]["psnr"] == best and preset != "clean" else cell)
        lines.append(f"| {preset} | " + " | ".join(cells) + " |")
    lines += ["", "Presets: " + "; ".join(f"`{k}` {v}" for k, v in report["presets"].items()), ""]
    if report.get("speed"):
        s = report["speed"]
        lines += [f"Speed (student ONNX, onnxruntime CPU, {report['threads']} threads): "
                  f"{s['tile_256_ms']:.1f} ms per 256×256 tile; 1280×720: {s['720p_fps']:.1f} frames/s "
                  f"(tiled {s['720p_tiled_256_ms']:.1f} ms, whole frame {s['720p_whole_frame_ms']:.1f} ms per frame).",
                  ""]
    for note in report.get("notes", []):
        lines.append(f"Note: {note}")
    return "\n".join(lines).rstrip() + "\n"


def save_grid(path: Path, samples: list[tuple[np.ndarray, np.ndarray]], columns: dict[str, Restorer],
              title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["input", *columns, "sharp"]
    fig, axes = plt.subplots(len(samples), len(names), figsize=(2.6 * len(names), 2.6 * len(samples)),
                             squeeze=False)
    for r, (degraded, sharp) in enumerate(samples):
        images = [degraded, *(fn(degraded) for fn in columns.values()), sharp]
        for c, (name, image) in enumerate(zip(names, images)):
            ax = axes[r][c]
            ax.imshow(np.clip(image, 0, 1))
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(name if name in ("input", "sharp") else METHOD_TITLES.get(name, name))
    fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)


# --- command ---------------------------------------------------------------------------


def main(argv=None) -> dict:
    opts = parse_options(Options, argv, __doc__.splitlines()[0])
    out = Path(opts.out)
    device = distributed.resolve_device(opts.device)
    notes = []

    # --- data -------------------------------------------------------------------------
    source = datasets.load_source(data=opts.data, val_fraction=opts.val_fraction)
    images = source.val_images[:opts.max_steps] if opts.max_steps else source.val_images
    if not images:
        raise SystemExit("error: the data has no held-out images (it needs at least two files); "
                         "pass --data with more images")
    pairs = build_pairs(images, opts.crop, PRESETS, opts.seed)
    if opts.paired:
        paired = datasets.load_source(paired=opts.paired, val_fraction=opts.val_fraction)
        held_out = paired.val_images[:opts.max_steps] if opts.max_steps else paired.val_images
        pairs["paired"] = [tuple(datasets.center_crop(im, opts.crop) for im in pair) for pair in held_out]

    # --- models -----------------------------------------------------------------------
    from models import CheckpointError, load_restormer, load_student
    from sharpcam.engine import Engine, ModelError
    try:
        engine = Engine(opts.student, device="cpu", threads=opts.threads)
    except ModelError as e:
        raise SystemExit(f"error: {e}; produce one with `python -m training.distill --out DIR`") from None
    restorers: dict[str, Restorer] = {"unsharp": unsharp_mask}
    teacher_path = Path(opts.teacher) if opts.teacher else Path("checkpoints/motion_deblurring.pth")
    if teacher_path.is_file():
        try:
            restorers["teacher"] = torch_restorer(load_restormer(teacher_path, device=device), device)
        except CheckpointError as e:
            raise SystemExit(f"error: --teacher: {e}") from None
    elif opts.teacher:
        raise SystemExit(f"error: teacher {teacher_path} not found; pass an existing --teacher or leave it out")
    else:
        notes.append(f"no teacher evaluated ({teacher_path} not found; pass --teacher)")
    student_pt = Path(opts.student_pt) if opts.student_pt else Path(opts.student).with_suffix(".pt")
    if student_pt.is_file():
        try:
            restorers["student_torch"] = torch_restorer(load_student(student_pt, device=device), device)
        except CheckpointError as e:
            raise SystemExit(f"error: --student-pt: {e}") from None
    else:
        notes.append(f"no PyTorch student evaluated ({student_pt} not found)")
    restorers["student_onnx"] = sharpcam_restorer(engine)

    # --- measure ----------------------------------------------------------------------
    print(f"evaluating {len(images)} held-out images × {len(pairs)} presets with "
          f"{', '.join(restorers)}", file=sys.stderr)
    started = time.time()
    table = evaluate(pairs, restorers)
    speed = measure_speed(engine, opts.speed_repeats)
    training = engine.info.training

    # --- save -------------------------------------------------------------------------
    out.mkdir(parents=True, exist_ok=True)
    presets = {"clean": "no degradation", "seed": "Gaussian σ 0.5",
               **{k: ", ".join(f"{a}={b}" for a, b in v.items()) for k, v in degrade.COMPONENTS.items()}}
    if "paired" in pairs:
        presets["paired"] = f"held-out real pairs from {opts.paired[0]}"
    report = dict(source=source.kind if source.kind != "builtin" else "scikit-image photos",
                  files=[f.name for f in source.val_files[:len(images)]], images=len(images), crop=opts.crop,
                  presets=presets, table=table, speed=speed, threads=opts.threads,
                  student=opts.student, student_training=training,
                  teacher=str(teacher_path) if "teacher" in restorers else None, notes=notes,
                  seconds=time.time() - started, options=asdict(opts))
    write_json(out / "report.json", report)
    markdown = report_markdown(report)
    write_atomically(out / "report.md", markdown.encode())
    grid_preset = "defocus"
    columns = {k: restorers[k] for k in ("student_onnx", "teacher") if k in restorers}
    save_grid(out / "grid.png", pairs[grid_preset][:4], columns,
              f"held-out crops, {grid_preset} blur ({presets[grid_preset]})")
    print(markdown)
    print(f"wrote {out/'report.json'}, {out/'report.md'}, {out/'grid.png'}", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
