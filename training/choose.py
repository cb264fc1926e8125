"""Choose among trained students on the training photos: ``python -m training.choose``.

Seeds of one recipe land far apart: on mild blur two seeds of the same command differ by
0.2–1.2 dB held out (docs/design_rounds.md, "Seventh round"), as much as two designs do. Keeping
the run with the best held-out rows would turn those rows into a number the run was
picked on. This command picks on the corpus's *training* photos instead: each candidate
is scored there, whole, on every row of `training.evaluate` (the same degradations, the
same seeds, the same 8-bit frames, run as sharpcam runs it), the unsharp masks are
measured on the same photos, and every row is held to the same release bars
(`evaluate.release_bars`). The candidate that meets the most bars wins; among equals, the
larger sum of dB margins (clean frames left out: their margin is tens of dB over a floor).
The held-out photos are never scored. Writes OUT/choice.json and prints a table.
"""
from __future__ import annotations

import sys
import time
from dataclasses import MISSING, asdict, dataclass
from pathlib import Path
from typing import Optional

from sharpcam.engine import Engine, ModelError
from sharpcam.sharpen import UNSHARP_AMOUNT
from training import data as datasets
from training import flicker
from training.errors import UsageError, reported_as_exit
from training.evaluate import PRESETS, evaluate_rows, release_bars, sharpcam_restorer
from training.options import option, parse_options
from training.runlog import write_json


@dataclass
class Options:
    """Score trained students on the training photos and name the one that meets the most release bars."""
    candidates: list[str] = option(MISSING, "student ONNX files to choose among (e.g. runs/seed*/student.onnx)",
                                   positional=True, metavar="STUDENT.onnx")
    out: str = option("runs/choose", "folder for choice.json")
    data: Optional[str] = option(None, "folder whose training split is scored; default: scikit-image's photos")
    val_fraction: float = option(0.15, "the split used in training (by name hash): these files are left out")
    max_images: Optional[int] = option(None, "score at most this many training photos (smoke runs)")
    rows: Optional[list[str]] = option(None, "score only these rows (default: all)", choices=PRESETS)
    flicker: bool = option(True, "also hold each candidate to the noisy-clip bar (flicker and edge contrast)")
    threads: int = option(1, "onnxruntime CPU threads per candidate")
    seed: int = option(0, "seed of the random parts of degradations, as in training.evaluate")


def margin_sum(bars: list[dict]) -> float:
    """dB margins added over the rows that are judged in dB against a baseline: not the
    clean floor, nor the clip's edge contrast (a ratio, not dB)."""
    return sum(b["margin"] for b in bars if b["row"] not in ("clean", "noisy still clip"))


def main(argv=None) -> dict:
    opts = parse_options(Options, argv, __doc__.splitlines()[0])
    with reported_as_exit():
        return run(opts)


def run(opts: Options) -> dict:
    out = Path(opts.out)

    # --- data -------------------------------------------------------------------------
    if not opts.candidates:
        raise UsageError("no candidates given; pass the student .onnx files to choose among")
    for path in opts.candidates:  # before the photos are decoded: a typo should not wait for them
        if not Path(path).is_file():
            raise UsageError(f"candidate {path} not found; pass student .onnx files, "
                             "e.g. runs/*/student.onnx from `python -m training.distill`")
    source = datasets.load_source(data=opts.data, val_fraction=opts.val_fraction)
    scored = list(zip(source.train_files, source.train_images))[:opts.max_images or None]
    files, images = [f.name for f, _ in scored], [image for _, image in scored]
    if not images:
        raise UsageError("the data has no training photos to score on; pass --data with more images")

    # --- models -----------------------------------------------------------------------
    names = {}
    for path in opts.candidates:
        try:
            names[path] = sharpcam_restorer(Engine(path, device="cpu", threads=opts.threads))
        except ModelError as e:
            raise UsageError(f"candidate {path}: {e}") from None
    if len(names) < len(opts.candidates):
        raise UsageError("a candidate is named twice; pass each student once")

    # --- score ------------------------------------------------------------------------
    rows = opts.rows or PRESETS
    print(f"scoring {len(names)} candidates on {len(images)} training photos × {len(rows)} rows "
          "(the held-out photos are not scored)", file=sys.stderr)
    started = time.time()
    try:
        table, amounts = evaluate_rows(images, 0, opts.seed, names, rows)
        steadiness = flicker.measure(images, names, opts.seed) if opts.flicker else None
    except ModelError as e:
        raise UsageError(f"a candidate failed on a training photo: {e}") from None
    results = []
    for path in names:
        bars = release_bars(table, steadiness, student=path)
        results.append(dict(candidate=path, met=sum(b["met"] for b in bars), bars=len(bars),
                            missed=[b["row"] for b in bars if not b["met"]], margin_sum=margin_sum(bars),
                            table={row: columns[path] for row, columns in table.items()}, bar_detail=bars))
    ranked = sorted(results, key=lambda r: (-r["met"], -r["margin_sum"]))

    # --- save -------------------------------------------------------------------------
    out.mkdir(parents=True, exist_ok=True)
    baselines = {row: {k: columns[k]["psnr"] for k in ("input", "unsharp", "unsharp_tuned") if k in columns}
                 for row, columns in table.items()}
    choice = dict(chosen=ranked[0]["candidate"], ranking=ranked, scored_on="training photos",
                  files=files, images=len(images), baselines=baselines, unsharp_amount=UNSHARP_AMOUNT,
                  unsharp_tuned_amounts=amounts, flicker=steadiness, seconds=time.time() - started,
                  options=asdict(opts))
    write_json(out / "choice.json", choice)
    print(f"| candidate | bars met | dB margin sum | missed |\n|---|---|---|---|")
    for r in ranked:
        print(f"| {r['candidate']} | {r['met']} of {r['bars']} | {r['margin_sum']:+.2f} | "
              f"{', '.join(r['missed']) or '—'} |")
    print(f"chose {choice['chosen']} (training photos; score it held out with `python -m training.evaluate`)",
          file=sys.stderr)
    print(f"wrote {out / 'choice.json'}", file=sys.stderr)
    return choice


if __name__ == "__main__":
    main()
