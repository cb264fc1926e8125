"""``--precision auto|fp32|int8``: the fp32 student or its INT8 sibling, whichever is faster.

``python -m training.quantize NAME.onnx`` writes ``NAME.int8.onnx`` beside it, with the
same contract and metadata plus ``sharpcam.precision=int8`` and the SHA-256 of the fp32
file it came from.  INT8 only pays on CPUs with fast 8-bit dot products, so ``auto``
does what ``--tile auto`` does: it times both on the real frame size at start-up
(interleaved runs, median) and keeps the faster.  ``PrecisionChoice`` looks like an
``Engine`` to the rest of sharpcam; it runs fp32 until the choice is made.
"""
from __future__ import annotations

import hashlib
import os
import statistics
import time
from typing import Callable, Optional

import numpy as np

from .engine import Engine, ModelError
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
    engines so that other load on the machine falls on both alike."""
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


def fastest(timings: dict) -> str:
    """The name with the lowest time; a tie keeps the first (fp32)."""
    return min(timings, key=timings.get)


class PrecisionChoice(Lifetime):
    """Engine-shaped pair of engines; ``choose`` (or ``warm_up``) keeps the faster one."""

    def __init__(self, engines: dict, repeats: int = 5, clock: Callable[[], float] = time.perf_counter):
        self.engines = dict(engines)
        self.active = next(iter(self.engines.values()))
        self.precision: Optional[str] = None
        self.timings: dict = {}
        self.choice_note = ""
        self._repeats, self._clock = repeats, clock

    def choose(self, batch_shape: tuple) -> str:
        self.timings = measure(self.engines, batch_shape, self._repeats, self._clock)
        self.precision = fastest(self.timings)
        self.active = self.engines[self.precision]
        self.choice_note = "auto precision: " + ", ".join(
            f"{name} {ms:.1f} ms" for name, ms in self.timings.items()
        ) + f" (median of {self._repeats}, {'x'.join(map(str, batch_shape))}) -> {self.precision}"
        return self.precision

    def warm_up(self, batch_shape: tuple) -> float:
        if self.precision is None:
            self.choose(batch_shape)
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
        if self.precision is None:
            first, *others = self.engines.values()
            return first.describe() + "".join(
                f", or {os.path.basename(e.info.path)} if faster (measured at start)" for e in others)
        return self.active.describe()

    def close(self) -> None:
        for engine in self.engines.values():
            engine.close()


def open_engine(model_path, precision: str = "auto", notify: Optional[Callable[[str], None]] = None,
                **engine_options):
    """The engine ``--precision`` asks for: fp32 (``model_path``), its INT8 sibling, or with
    ``auto`` both when a sibling made from this very fp32 file exists (else fp32 alone, and
    ``notify`` hears why a sibling present was passed over).  Raises ModelError."""
    if precision not in PRECISIONS:
        raise ModelError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "fp32":
        return Engine(model_path, **engine_options)
    sibling = int8_sibling(model_path)
    if not os.path.isfile(sibling):
        if precision == "int8":
            raise ModelError(f"--precision int8: no INT8 model beside {model_path} (expected {sibling}); "
                             f"make one with `python -m training.quantize {model_path}`, "
                             "or use --precision fp32")
        return Engine(model_path, **engine_options)
    fp32 = Engine(model_path, **engine_options)
    try:
        int8 = Engine(sibling, **engine_options)
        problem = sibling_problem(fp32, int8)
    except ModelError as exc:
        int8, problem = None, str(exc)
    if problem and precision == "int8":
        raise ModelError(f"--precision int8: {problem}")
    if problem:
        if notify:
            notify(f"ignoring the INT8 model: {problem}; running fp32")
        return fp32
    if precision == "int8":
        fp32.close()
        return int8
    return PrecisionChoice({"fp32": fp32, "int8": int8})
