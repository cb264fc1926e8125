"""Which engine runs the student: ``--precision auto|fp32|int8`` and ``--threads auto|N``.

``python -m training.quantize NAME.onnx`` writes ``NAME.int8.onnx`` beside it, with the
same contract and metadata plus ``sharpcam.precision=int8`` and the SHA-256 of the fp32
file it came from.  INT8 only pays on CPUs with fast 8-bit dot products, and a second
thread only pays when one cannot keep up with the camera (each thread costs CPU the call
app needs, for less and less speed), so ``auto`` does what ``--tile auto`` does: it times
the candidates on the real frame size at start-up (interleaved runs, median) and keeps
the cheapest that keeps up: the fewest threads whose runs fit the camera's frame
interval, the faster precision of those; the fastest when none fits.  ``EngineChoice``
looks like an ``Engine`` to the rest of sharpcam; it runs its first candidate until the
choice is made.
"""
from __future__ import annotations

import hashlib
import os
import statistics
import time
from typing import Callable, Optional

import numpy as np

from .engine import CPU_PROVIDER, Engine, ModelError, choose_providers, default_threads, thread_label
from .lifetime import Lifetime

PRECISIONS = ("auto", "fp32", "int8")
SOURCE_HASH_KEY = "sharpcam.fp32_sha256"


def int8_sibling(model_path) -> str:
    """Where the INT8 model of ``model_path`` lives: ``student.onnx`` -> ``student.int8.onnx``."""
    root, ext = os.path.splitext(os.fspath(model_path))
    return f"{root}.int8{ext or '.onnx'}"


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sibling_problem(fp32: Engine, int8: Engine) -> Optional[str]:
    """Why the INT8 sibling cannot stand in for the fp32 model (None when it can)."""
    source = int8.info.metadata.get(SOURCE_HASH_KEY)
    if source is not None and source != file_sha256(fp32.info.path):
        return (f"{os.path.basename(int8.info.path)} was quantised from another version of "
                f"{os.path.basename(fp32.info.path)}; re-run `python -m training.quantize "
                f"{fp32.info.path}`")
    def geometry(engine) -> str:
        whole = "/whole frame" if engine.reads_whole_frame else ""
        return f"{engine.receptive_radius}/{engine.size_multiple}{whole}"

    if geometry(int8) != geometry(fp32):
        return (f"{os.path.basename(int8.info.path)} declares receptive radius/size multiple "
                f"{geometry(int8)}, the fp32 model {geometry(fp32)}")
    return None


def measure(engines: dict, batch_shape: tuple, repeats: int = 5,
            clock: Callable[[], float] = time.perf_counter) -> dict:
    """Median ms per run of each engine on a zero batch; the runs alternate between the
    engines so that other load on the machine falls on all alike."""
    batch = np.zeros(batch_shape, np.float32)
    for engine in engines.values():
        engine.run(batch)  # first runs allocate
    samples = {name: [] for name in engines}
    for _ in range(repeats):
        for name, engine in engines.items():
            start = clock()
            engine.run(batch)
            samples[name].append((clock() - start) * 1000.0)
    return {name: statistics.median(ms) for name, ms in samples.items()}


# The model's share of the camera's frame interval: converting the frame in and out, the
# blend and the sinks take about a fifth of it at 720p on a laptop CPU, and a run that only
# just fits would drop frames whenever the call app takes the core for a moment.
MODEL_SHARE_OF_FRAME = 0.75


def pick(timings: dict, threads: dict, frame_ms: Optional[float] = None) -> str:
    """The candidate to keep. Given the camera's frame interval, the fewest threads whose
    median run fits the model's share of it, the faster of those; when none fits, or with
    no interval (a file, a benchmark), the fastest. A tie keeps the first."""
    fitting = [] if frame_ms is None else [
        name for name in timings if timings[name] <= MODEL_SHARE_OF_FRAME * frame_ms]
    if fitting:
        return min(fitting, key=lambda name: (threads[name], timings[name]))
    return min(timings, key=timings.get)


def runs_on_cpu(device: str) -> bool:
    """Whether ``--device`` resolves to the CPU: threads are only worth choosing there (a GPU
    provider would get two sessions, twice the memory, for nothing)."""
    return choose_providers(device)[0] == CPU_PROVIDER


def thread_candidates() -> list[int]:
    """What ``--threads auto`` measures: one thread, and the default count (the cores less
    one for the call app, at most 4; all of them below 4 cores) when that is more."""
    return sorted({1, default_threads()})


class EngineChoice(Lifetime):
    """Engine-shaped set of engines over one model; ``choose`` (or ``warm_up``) keeps one."""

    def __init__(self, engines: dict, repeats: int = 5, clock: Callable[[], float] = time.perf_counter):
        self.engines = dict(engines)
        self.active = next(iter(self.engines.values()))
        self.chosen: Optional[str] = None
        self.timings: dict = {}
        self.choice_note = ""
        self._repeats, self._clock = repeats, clock

    def choose(self, batch_shape: tuple, frame_ms: Optional[float] = None) -> str:
        self.timings = measure(self.engines, batch_shape, self._repeats, self._clock)
        threads = {name: engine.threads for name, engine in self.engines.items()}
        self.chosen = pick(self.timings, threads, frame_ms)
        self.active = self.engines[self.chosen]
        budget = (f"; the model's share of a frame: {MODEL_SHARE_OF_FRAME * frame_ms:.1f} ms"
                  if frame_ms is not None else "")
        self.choice_note = "auto engine: " + ", ".join(
            f"{name} {ms:.1f} ms" for name, ms in self.timings.items()
        ) + f" (median of {self._repeats}, {'x'.join(map(str, batch_shape))}{budget}) -> {self.chosen}"
        return self.chosen

    def warm_up(self, batch_shape: tuple, frame_ms: Optional[float] = None) -> float:
        if self.chosen is None:
            self.choose(batch_shape, frame_ms)
        return self.active.warm_up(batch_shape)

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.active.run(batch)

    @property
    def last_ms(self) -> float:
        return self.active.last_ms

    @property
    def info(self):
        return self.active.info

    @property
    def providers(self):
        return self.active.providers

    @property
    def threads(self):
        return self.active.threads

    @property
    def receptive_radius(self) -> int:
        return self.active.receptive_radius

    @property
    def size_multiple(self) -> int:
        return self.active.size_multiple

    @property
    def reads_whole_frame(self) -> bool:
        return self.active.reads_whole_frame

    def describe(self) -> str:
        if self.chosen is None:
            return self.active.describe() + f"; measured at start against {', '.join(list(self.engines)[1:])}"
        return self.active.describe()

    def close(self) -> None:
        for engine in self.engines.values():
            engine.close()


def open_engine(model_path, precision: str = "auto", notify: Optional[Callable[[str], None]] = None,
                threads=None, **engine_options):
    """The engine the options ask for: one Engine, or an EngineChoice of several.

    ``precision``: fp32 (``model_path``), its INT8 sibling, or auto: both when a sibling made
    from this very fp32 file exists (else fp32 alone, and ``notify`` hears why a sibling
    present was passed over). ``threads``: a count, None for the default count, or "auto"
    (`thread_candidates`). Raises ModelError."""
    if precision not in PRECISIONS:
        raise ModelError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if threads == "auto":
        counts = thread_candidates() if runs_on_cpu(engine_options.get("device", "auto")) else [None]
    else:
        counts = [threads]
    opened = {}  # (path, threads) -> Engine: sessions made to check a sibling are kept

    def engine(path, count):
        if (path, count) not in opened:
            opened[path, count] = Engine(path, threads=count, **engine_options)
        return opened[path, count]

    paths = {"fp32": model_path}
    sibling = int8_sibling(model_path)
    if precision == "int8" and not os.path.isfile(sibling):
        raise ModelError(f"--precision int8: no INT8 model beside {model_path} (expected {sibling}); "
                         f"make one with `python -m training.quantize {model_path}`, "
                         "or use --precision fp32")
    if precision != "fp32" and os.path.isfile(sibling):
        fp32 = engine(model_path, counts[0])
        try:
            problem = sibling_problem(fp32, engine(sibling, counts[0]))
        except ModelError as exc:
            problem = str(exc)
        if problem and precision == "int8":
            for session in opened.values():
                session.close()
            raise ModelError(f"--precision int8: {problem}")
        if problem and notify:
            notify(f"ignoring the INT8 model: {problem}; running fp32")
        if not problem:
            paths = {"int8": sibling} if precision == "int8" else {"fp32": model_path, "int8": sibling}
    candidates = {}
    for name, path in paths.items():
        for count in counts:
            label = " ".join(([name] if len(paths) > 1 else []) +
                             ([thread_label(count)] if len(counts) > 1 else []))
            candidates[label or name] = engine(path, count)
    for session in opened.values():
        if not any(session is kept for kept in candidates.values()):
            session.close()
    if len(candidates) == 1:
        return next(iter(candidates.values()))
    return EngineChoice(candidates)
