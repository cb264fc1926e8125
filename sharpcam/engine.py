"""The inference engine: one onnxruntime session over a student ONNX model.

Owns loading and validating the model against the SharpCam contract (one
``image`` input, N×3×H×W float32 RGB in [0, 1], same-shape output, metadata
``sharpcam.receptive_radius`` and ``sharpcam.size_multiple``), choosing the
execution provider, and running batches.  It knows nothing about frames,
tiles or colours: callers hand it NCHW float32 and get NCHW float32 back.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import onnxruntime as ort

from .lifetime import Lifetime

# Tried in this order for --device auto/gpu; the first one installed wins.
GPU_PROVIDERS = (
    "CUDAExecutionProvider",
    "DmlExecutionProvider",
    "CoreMLExecutionProvider",
    "OpenVINOExecutionProvider",
)
CPU_PROVIDER = "CPUExecutionProvider"
MAX_SIZE_MULTIPLE = 32


def default_threads() -> int:
    """Inference threads when --threads is not given: with 4 or more cores one is left to
    the call app, which encodes our video (at most 4: a small UNet gains little beyond)."""
    cores = os.cpu_count() or 1
    return max(1, min(4, cores - 1)) if cores >= 4 else cores


def thread_label(count: int) -> str:
    return f"{count} thread{'' if count == 1 else 's'}"


class ModelError(Exception):
    """The model file is missing, unreadable or breaks the SharpCam contract."""


@dataclass(frozen=True)
class ModelInfo:
    """What the pipeline needs to know about a model, read from its metadata."""

    path: str
    receptive_radius: int
    size_multiple: int
    # True for a model whose every pixel also depends on the whole frame (a frame-wide
    # estimate of the camera's softness): it runs on whole frames only, never tiles.
    reads_whole_frame: bool = False
    arch: str = "unknown"
    preset: str = "unknown"
    metadata: dict = field(default_factory=dict)

    @property
    def training(self) -> dict:
        try:
            return json.loads(self.metadata.get("sharpcam.training", "{}"))
        except ValueError:
            return {}


def choose_providers(device: str = "auto", available: Optional[list] = None) -> list:
    """Provider list for onnxruntime; ``device`` is auto, cpu or gpu."""
    available = list(ort.get_available_providers() if available is None else available)
    if device == "cpu":
        return [CPU_PROVIDER]
    gpus = [p for p in GPU_PROVIDERS if p in available]
    if device == "gpu" and not gpus:
        raise ModelError(
            "--device gpu: no GPU execution provider is installed "
            f"(have: {', '.join(available) or 'none'}); install onnxruntime-gpu, "
            "onnxruntime-directml or onnxruntime-openvino, or use --device cpu")
    if device not in ("auto", "gpu"):
        raise ModelError(f"--device must be auto, cpu or gpu, not {device!r}")
    # The CPU provider stays last so nodes a GPU provider cannot run still run.
    return gpus[:1] + [CPU_PROVIDER]


def _int_metadata(meta: dict, key: str, override: Optional[int], path: str) -> int:
    if override is not None:
        return int(override)
    raw = meta.get(key)
    if raw is None:
        raise ModelError(
            f"model {path} lacks metadata '{key}' (not a SharpCam export?); "
            "re-export it with `python -m training.export`, or pass "
            "--receptive-radius/--size-multiple for a foreign model")
    try:
        return int(raw)
    except ValueError:
        raise ModelError(f"model {path}: metadata '{key}' is {raw!r}, not an integer") from None


class Engine(Lifetime):
    """An onnxruntime session over one student model.

    Use as ``with Engine(path) as engine: y = engine.run(x)``; ``run`` takes
    and returns N×3×H×W float32 with H and W multiples of ``size_multiple``.
    """

    # What a choice measured at start-up chose (EngineChoice's note); one engine has none.
    choice_note = ""

    def __init__(self, model_path: str, *, device: str = "auto", threads: Optional[int] = None,
                 receptive_radius: Optional[int] = None, size_multiple: Optional[int] = None):
        model_path = os.fspath(model_path)
        if not os.path.isfile(model_path):
            raise ModelError(f"model file not found: {model_path} (pass --model PATH to a student .onnx)")
        options = ort.SessionOptions()
        threads = threads or default_threads()
        options.intra_op_num_threads = int(threads)
        # Inter-op parallelism only helps branchy graphs; a UNet is a chain.
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning worker threads burn the cores the capture thread and the call app (which
        # encodes our video) need; measured on 2 cores with other load, 2 threads went from
        # 104 ms to 69 ms per 720p frame without spinning.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        options.log_severity_level = 3
        self.providers = choose_providers(device)
        try:
            self._session = ort.InferenceSession(model_path, options, providers=self.providers)
        except Exception as exc:  # onnxruntime raises several unrelated types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"cannot load model {model_path}: {first[:300]}") from None
        self.providers = self._session.get_providers()
        self.info = self._validate(model_path, receptive_radius, size_multiple)
        self.threads = threads
        self.last_ms = 0.0

    def _validate(self, path, receptive_radius, size_multiple) -> ModelInfo:
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or inputs[0].name != "image":
            names = ", ".join(i.name for i in inputs)
            raise ModelError(f"model {path} must have one input named 'image', has: {names}")
        if len(outputs) != 1:
            raise ModelError(f"model {path} must have exactly one output, has {len(outputs)}")
        if inputs[0].type != "tensor(float)":
            raise ModelError(f"model {path}: input 'image' must be float32, is {inputs[0].type}")
        shape = inputs[0].shape
        if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != 3):
            raise ModelError(f"model {path}: input 'image' must be N×3×H×W, is {shape}")
        meta = dict(self._session.get_modelmeta().custom_metadata_map)
        radius = _int_metadata(meta, "sharpcam.receptive_radius", receptive_radius, path)
        multiple = _int_metadata(meta, "sharpcam.size_multiple", size_multiple, path)
        if radius < 0 or not 1 <= multiple <= MAX_SIZE_MULTIPLE:
            raise ModelError(
                f"model {path}: receptive_radius={radius}, size_multiple={multiple} "
                f"(need radius >= 0 and 1 <= size_multiple <= {MAX_SIZE_MULTIPLE})")
        whole_frame = meta.get("sharpcam.reads_whole_frame", "0")
        if whole_frame not in ("0", "1"):
            raise ModelError(f"model {path}: metadata 'sharpcam.reads_whole_frame' is {whole_frame!r}, "
                             "not 0 or 1; re-export it with `python -m training.export`")
        return ModelInfo(path=path, receptive_radius=radius, size_multiple=multiple,
                         reads_whole_frame=whole_frame == "1",
                         arch=meta.get("sharpcam.arch", "unknown"),
                         preset=meta.get("sharpcam.preset", "unknown"), metadata=meta)

    @property
    def receptive_radius(self) -> int:
        return self.info.receptive_radius

    @property
    def reads_whole_frame(self) -> bool:
        return self.info.reads_whole_frame

    @property
    def size_multiple(self) -> int:
        return self.info.size_multiple

    def run(self, batch: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        try:
            (out,) = self._session.run(None, {"image": batch})
        except Exception as exc:  # onnxruntime raises several unrelated types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"model {self.info.path} fails on input {batch.shape}: {first[:300]}") from None
        self.last_ms = (time.perf_counter() - start) * 1000.0
        if out.shape != batch.shape:
            raise ModelError(
                f"model {self.info.path} returned shape {out.shape} for input {batch.shape}; "
                "the contract wants the same shape (re-export it with `python -m training.export`)")
        return out

    def warm_up(self, batch_shape: tuple, frame_ms: Optional[float] = None) -> float:
        """Run once on zeros so the first real frame does not pay for allocation; returns ms.
        (``frame_ms`` is for a choice between engines, see engine_choice; one has none.)"""
        self.run(np.zeros(batch_shape, np.float32))
        return self.last_ms

    def describe(self) -> str:
        provider = self.providers[0].replace("ExecutionProvider", "")
        threads = f", {thread_label(self.threads)}" if self.threads else ""
        reach = "reads the whole frame" if self.reads_whole_frame else f"radius {self.receptive_radius}px"
        return (f"{os.path.basename(self.info.path)} ({self.info.arch}/{self.info.preset}, "
                f"{reach}, multiple {self.size_multiple}) on {provider}{threads}")

    def close(self) -> None:
        self._session = None
