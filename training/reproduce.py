"""`python -m training.reproduce`: the bundled student from nothing, in one command.

It runs MODEL_CARD.md's recipe step by step, each step the project's own command in a
process of its own:
1. the photo corpus (`training.corpus`), unless `--data` already holds one;
2. the base run (20,000 steps from scratch) and its INT8-aware fine-tune;
3. the text-page fine-tune and its INT8-aware fine-tune;
4. the INT8 export (`training.quantize`) and the held-out table (`training.evaluate`).

Then it says whether the weights it made are the ones sharpcam ships, tensor by tensor.

A step whose result is already there is skipped, and a training step that was stopped part
way continues from its `last.pt` (`--resume`), so running the command again after Ctrl-C
or a reboot picks up where it stopped. `--dry-run` prints the commands and runs nothing.

Each step runs with `--threads` threads (OMP_NUM_THREADS, default 1): the bundled student was
trained on one thread, and a different count sums in a different order, so its weights
come out close but not bit-identical. On a GPU, distill picks it by itself (`--device auto`).
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import onnx
from onnx import numpy_helper

from training.errors import UsageError, reported_as_exit
from training.options import option, parse_options

BUNDLED_STUDENT = Path(__file__).resolve().parent.parent / "sharpcam" / "assets" / "student.onnx"


@dataclass
class Options:
    out: str = option("runs", "folder for the four training runs (OUT/realtime, OUT/realtime-int8, "
                              "OUT/realtime-text, OUT/realtime-text-int8) and OUT/evaluate")
    data: str = option("data/photos", "the photo corpus; built by `training.corpus` if it holds no "
                                      "manifest.json")
    threads: int = option(1, "threads per step (OMP_NUM_THREADS); the bundled student was trained on 1")
    bundled: str = option(str(BUNDLED_STUDENT), "the fp32 student to compare the result with")
    dry_run: bool = option(False, "print the commands, run nothing")


@dataclass(frozen=True)
class Step:
    """One command of the recipe, and the file whose presence says it has finished."""
    name: str
    module: str
    args: tuple[str, ...]
    done_when: Path

    def command(self) -> list[str]:
        return ["python", "-m", self.module, *self.args]

    @property
    def run_folder(self) -> Optional[Path]:
        """A training run's --out, where last.pt lets it continue; None for other steps."""
        return Path(self.args[self.args.index("--out") + 1]) if self.module == "training.distill" else None


# The schedule every distill step shares: Adam with a cosine decay after a linear warm-up,
# gradients clipped at norm 1, ground truth alone (β 0: MODEL_CARD.md, "Distillation").
def _schedule(lr: str, warmup: str, min_lr: str) -> tuple[str, ...]:
    return ("--lr", lr, "--schedule", "cosine", "--warmup", warmup, "--min-lr", min_lr, "--grad-clip", "1")


def recipe(opts: Options) -> list[Step]:
    """The recipe's steps, in order, writing under opts.out and reading opts.data."""
    out, data = Path(opts.out), opts.data
    base, base8 = out / "realtime", out / "realtime-int8"
    text, text8 = out / "realtime-text", out / "realtime-text-int8"
    ground_truth = ("--alpha", "1", "--beta", "0")
    # The text steps: 70 % of the pool labelled by the student's own output (the anchor),
    # 30 % fresh pages of print, small and large, labelled by the sharp page.
    text_pages = ("--data", data, "--degradation", "webcam", "--correct", "webcam",
                  "--correct-source", "text-pages", "--correct-share", "0.3", *ground_truth,
                  "--pool", "8000", "--crop", "160", "--batch-size", "6", "--epochs", "1000")
    return [
        Step("corpus", "training.corpus", ("--out", data), Path(data) / "manifest.json"),
        Step("base", "training.distill",
             ("--data", data, *ground_truth, "--pool", "20000", "--crop", "96", "--batch-size", "16",
              "--epochs", "1000", "--max-steps", "20000", *_schedule("3e-3", "300", "1e-5"),
              "--eval-every", "2500", "--ckpt-every", "1000", "--seed", "2", "--out", str(base)),
             base / "metrics.json"),
        Step("base, INT8-aware", "training.distill",
             ("--init", str(base / "student.pt"), "--int8-aware", "--data", data, *ground_truth,
              "--pool", "20000", "--crop", "96", "--batch-size", "16", "--epochs", "1000",
              "--max-steps", "3000", *_schedule("1e-4", "100", "1e-6"),
              "--eval-every", "1000", "--ckpt-every", "1000", "--seed", "2", "--out", str(base8)),
             base8 / "metrics.json"),
        Step("text pages", "training.distill",
             ("--init", str(base8 / "student.pt"), "--anchor", str(base8 / "student.pt"), *text_pages,
              "--max-steps", "8000", *_schedule("3e-3", "100", "1e-6"),
              "--eval-every", "100000", "--seed", "7", "--out", str(text)),
             text / "metrics.json"),
        Step("text pages, INT8-aware", "training.distill",
             ("--init", str(text / "student.pt"), "--anchor", str(text / "student.pt"), "--int8-aware",
              *text_pages, "--max-steps", "3000", *_schedule("1e-4", "100", "1e-6"),
              "--eval-every", "100000", "--ckpt-every", "1000", "--seed", "2", "--out", str(text8)),
             text8 / "metrics.json"),
        Step("INT8", "training.quantize",
             (str(text8 / "student.onnx"), "--calibration", data, "--calibration-split", "all",
              "--exclude", "/decoders.0/up/ConvTranspose"),
             text8 / "student.int8.onnx"),
        Step("held-out table", "training.evaluate",
             ("--student", str(text8 / "student.onnx"), "--data", data, "--before-after", "chelsea",
              "--out", str(out / "evaluate")),
             out / "evaluate" / "report.json"),
    ]


def shell_line(step: Step) -> str:
    return shlex.join(step.command())


def weight_differences(made: Path, bundled: Path) -> dict[str, float]:
    """Max |difference| of each weight tensor of two ONNX students (by initializer name);
    a tensor present in only one of them counts as infinitely different."""
    def weights(path: Path) -> dict[str, np.ndarray]:
        return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    a, b = weights(made), weights(bundled)
    differences = {}
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b or a[name].shape != b[name].shape:
            differences[name] = float("inf")
        else:
            differences[name] = float(np.max(np.abs(a[name].astype(np.float64) - b[name].astype(np.float64)),
                                             initial=0.0))
    return differences


def comparison_line(made: Path, bundled: Path) -> str:
    if not bundled.is_file():
        return f"no bundled student at {bundled} to compare with"
    differences = weight_differences(made, bundled)
    worst = max(differences.values(), default=0.0)
    if worst == 0.0:
        return f"{made}: all {len(differences)} weight tensors are identical to {bundled}"
    differing = sum(d > 0 for d in differences.values())
    return (f"{made}: {differing} of {len(differences)} weight tensors differ from {bundled} "
            f"(largest |difference| {worst:.3g}). Another thread count, CPU (AVX2 or AVX-512), OpenCV "
            f"(it draws the text pages), GPU or corpus changes the weights, as each run's metrics.json "
            f"records; compare the held-out tables instead (OUT/evaluate/report.md against MODEL_CARD.md)")


def run_step(step: Step, threads: int) -> None:
    command = step.command()
    if step.run_folder is not None and (step.run_folder / "last.pt").is_file():
        command.append("--resume")
    command[0] = sys.executable
    environment = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    started = time.monotonic()
    child = subprocess.Popen(command, env=environment)
    # Ctrl-C or SIGTERM is passed on to the step, which stops the way it stops on its own (a
    # training run saves OUT/last.pt at its next step), and waited for: nothing is cut half-written.
    interrupted = []

    def pass_on(signum, frame):
        interrupted.append(signum)
        child.send_signal(signum)
    previous = {sig: signal.signal(sig, pass_on) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        returncode = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if interrupted:
        raise UsageError(f"interrupted during step '{step.name}'; run python -m training.reproduce again to "
                         f"continue from there")
    if returncode != 0:
        raise UsageError(f"step '{step.name}' stopped (exit {returncode}); fix what it said and run "
                         f"python -m training.reproduce again to continue from there")
    print(f"[reproduce] {step.name}: done in {(time.monotonic() - started) / 60:.1f} min", flush=True)


def main(argv=None) -> dict:
    with reported_as_exit():
        opts = parse_options(Options, argv, __doc__.splitlines()[0])
        if opts.threads < 1:
            raise UsageError(f"--threads {opts.threads} must be at least 1")
        data = Path(opts.data)
        if data.is_dir() and any(data.iterdir()) and not (data / "manifest.json").is_file():
            # training.corpus would write its photos into the folder and tidy it as its own.
            raise UsageError(f"--data {data} holds files but no corpus manifest.json; pass a new folder to build "
                             f"the corpus in (default data/photos), or build one from your photos with "
                             f"python -m training.corpus --folder {data} --out data/photos")
        steps = recipe(opts)
        # Every step after the first unfinished one reads what that one makes, so all of them run
        # again; a training run of theirs already on disk was made from older inputs and would be
        # overwritten, so it is left for the user to move.
        first = next((i for i, step in enumerate(steps) if not step.done_when.exists()), len(steps))
        stale = [str(step.run_folder) for step in steps[first + 1:]
                 if step.run_folder is not None and step.run_folder.is_dir() and any(step.run_folder.iterdir())]
        if stale:
            raise UsageError(f"{', '.join(stale)} {'holds a run' if len(stale) == 1 else 'hold runs'} made before "
                             f"step '{steps[first].name}' ran; move {'it' if len(stale) == 1 else 'them'} away "
                             f"or pass another --out")
        ran, skipped = [], []
        for i, step in enumerate(steps):
            if i < first:
                print(f"[reproduce] {step.name}: already done ({step.done_when})", flush=True)
                skipped.append(step.name)
                continue
            print(f"[reproduce] {step.name}: {shell_line(step)}", flush=True)
            if not opts.dry_run:
                run_step(step, opts.threads)
            ran.append(step.name)
        result = dict(ran=ran, skipped=skipped)
        if not opts.dry_run:
            shipped = [step.run_folder for step in steps if step.run_folder is not None][-1] / "student.onnx"
            line = comparison_line(shipped, Path(opts.bundled))
            print(f"[reproduce] {line}", flush=True)
            result["comparison"] = line
        return result


if __name__ == "__main__":
    main()
