"""Checkpoint files: one file holding weights, model config, training metadata and
(optionally) the state needed to resume training.

Files are written atomically (temp file, fsync, rename), so an interrupted save never
leaves a corrupt checkpoint behind, and read with `torch.load(weights_only=True)`, because
checkpoints from the internet are untrusted.
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import onnx
import torch
from onnx import numpy_helper

from sharpcam.atomic_file import write_atomically
from models.restormer import Restormer, restormer_config_from_state_dict
from models.student import ResidualUNet

FORMAT = "sharpcam-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A file that cannot be used as the checkpoint asked for; the message says why."""


def save_checkpoint(path, *, arch: str, config: dict, state_dict: dict, meta: dict | None = None,
                    train_state: dict | None = None) -> Path:
    payload = dict(format=FORMAT, version=VERSION, arch=arch, config=config,
                   state_dict={k: v.detach().cpu() for k, v in state_dict.items()},
                   meta=meta or {}, train_state=train_state)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return write_atomically(path, buffer.getvalue())


def read_checkpoint_file(path):
    """The raw object stored in a checkpoint file, loaded safely, with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:
        magic = f.read(4)
    # torch.save writes a zip archive; files from torch < 1.6 are a bare pickle stream.
    is_zip, is_pickle = magic == b"PK\x03\x04", magic[:1] == b"\x80"
    if not (is_zip or is_pickle):
        raise CheckpointError(f"{path} is not a PyTorch checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses arbitrary objects: the file may run code when unpickled.
        raise CheckpointError(f"{path} holds objects other than tensors and plain values, which "
                              f"are not loaded from untrusted files ({str(e).splitlines()[0]})") from None
    except Exception:  # torch reports damage as RuntimeError, OSError, EOFError, ...
        raise CheckpointError(f"{path} is truncated or corrupt; download or save it again") from None


def load_checkpoint(path) -> dict:
    """A checkpoint in our own format: keys arch, config, state_dict, meta, train_state."""
    payload = read_checkpoint_file(path)
    if not (isinstance(payload, dict) and payload.get("format") == FORMAT):
        raise CheckpointError(f"{path} is not a SharpCam checkpoint (no '{FORMAT}' marker)")
    return payload


def _state_dict_of(payload, path, arch):
    """Accepts our format, the released {'params': sd} layout, or a bare state dict."""
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        if payload["arch"] != arch:
            raise CheckpointError(f"{path} holds a {payload['arch']} model, not a {arch}")
        return payload["state_dict"], payload.get("config")
    if isinstance(payload, dict) and isinstance(payload.get("params"), dict):
        return payload["params"], None
    if isinstance(payload, dict) and isinstance(payload.get("params_ema"), dict):
        return payload["params_ema"], None
    if isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        return payload, None
    raise CheckpointError(f"{path} holds no state dict (expected {{'params': ...}}, a SharpCam "
                          "checkpoint or a bare state dict)")


def _check_keys(model, state_dict, path, arch):
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        raise CheckpointError(
            f"{path} is not a {arch} checkpoint: first missing key "
            f"{missing[0] if missing else None!r}, first unexpected key "
            f"{unexpected[0] if unexpected else None!r} "
            f"({len(missing)} missing, {len(unexpected)} unexpected)")
    for k, v in expected.items():
        if state_dict[k].shape != v.shape:
            raise CheckpointError(f"{path}: {k} has shape {tuple(state_dict[k].shape)}, "
                                  f"the {arch} built from it expects {tuple(v.shape)}")


def load_restormer(path, device="cpu") -> Restormer:
    """A Restormer in eval mode from a released file, our checkpoint, or a bare state dict.

    The configuration is read back from the tensors, so every released task and our
    smaller teachers load with no flags."""
    state_dict, _ = _state_dict_of(read_checkpoint_file(path), path, Restormer.arch)
    if "patch_embed.proj.weight" not in state_dict:
        first = next(iter(state_dict), None)
        raise CheckpointError(f"{path} is not a Restormer checkpoint: first missing key "
                              f"'patch_embed.proj.weight', first unexpected key {first!r}")
    try:
        config = restormer_config_from_state_dict(state_dict)
        model = Restormer(**config)
    except (KeyError, ValueError, IndexError) as e:
        raise CheckpointError(f"{path} is not a Restormer checkpoint: cannot read its "
                              f"configuration ({e})") from None
    _check_keys(model, state_dict, path, Restormer.arch)
    model.load_state_dict(state_dict, strict=True)
    return model.to(device).eval()


def student_weights_from_onnx(path) -> tuple[dict, dict]:
    """(state dict, config) read back from a student exported by training.export: the
    configuration is in the file's metadata and every parameter is an initializer under
    its PyTorch name, so the shipped model can be fine-tuned without a .pt beside it."""
    try:
        model = onnx.load(str(path))
    except Exception as e:  # protobuf reports damage in many ways
        raise CheckpointError(f"{path} is not a readable ONNX file ({type(e).__name__})") from None
    meta = {p.key: p.value for p in model.metadata_props}
    if meta.get("sharpcam.arch") != ResidualUNet.arch or "sharpcam.config" not in meta:
        raise CheckpointError(f"{path} is not a SharpCam student (no sharpcam.arch/sharpcam.config "
                              "metadata); export one with `python -m training.export`")
    state_dict = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in model.graph.initializer}
    # The exporter stores equal tensors once (an untrained student's zero biases) and names
    # the other copies through Identity nodes.
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input[0] in state_dict and node.output[0] not in state_dict:
            state_dict[node.output[0]] = state_dict[node.input[0]].clone()
    return state_dict, json.loads(meta["sharpcam.config"])


def load_student(path, device="cpu") -> ResidualUNet:
    """The Residual UNet student in eval mode from a SharpCam checkpoint (.pt) or from the
    ONNX file that sharpcam runs (.onnx)."""
    if Path(path).suffix.lower() == ".onnx":
        everything, config = student_weights_from_onnx(path)
        model = ResidualUNet(**config)
        # Any other initializer is a constant the exporter kept, not a parameter.
        state_dict = {k: v for k, v in everything.items() if k in model.state_dict()}
    else:
        state_dict, config = _state_dict_of(load_checkpoint(path), path, ResidualUNet.arch)
        model = ResidualUNet(**config)
    _check_keys(model, state_dict, path, ResidualUNet.arch)
    model.load_state_dict(state_dict, strict=True)
    return model.to(device).eval()
