"""`python -m training.export CKPT -o student.onnx`: the student as the ONNX file sharpcam runs.

The contract other tools rely on: one input `image`, float32, N×3×H×W, RGB in [0, 1], with
dynamic N, H and W (every H and W that are multiples of 32 work); one output `sharpened`
of the same shape, the sharpened image itself (not the residual). The metadata carries
the preset, the config, the training summary, and the receptive-field radius and size
multiple that sharpcam's tiler needs. The export verifies itself with onnxruntime on a
real photograph and fails if max |torch − onnx| exceeds 1e-4.
"""

from __future__ import annotations

import io
import json
import sys
import warnings
from dataclasses import MISSING, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import skimage.data
import torch

from models import CheckpointError, ResidualUNet, load_checkpoint
from sharpcam.atomic_file import write_atomically
from training.options import option, parse_options

OPSET = 17
PARITY_TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """The ONNX file did not reproduce the torch model; nothing was written."""


def sample_photo(height: int, width: int) -> np.ndarray:
    """A real photograph (scikit-image's astronaut, read from the installed package),
    H×W×3 float32 in [0, 1]: parity on natural images, not only on noise."""
    photo = skimage.data.astronaut()[:height, :width].astype(np.float32) / 255.0
    return np.ascontiguousarray(photo)


def metadata_for(model, meta: dict) -> dict[str, str]:
    return {
        "sharpcam.arch": model.arch,
        "sharpcam.preset": str(model.config.get("preset")),
        "sharpcam.config": json.dumps(model.config),
        "sharpcam.training": json.dumps(meta),
        "sharpcam.receptive_radius": str(model.receptive_radius),
        "sharpcam.size_multiple": str(model.size_multiple),
        "sharpcam.reads_whole_frame": "1" if model.reads_whole_frame else "0",
    }


def _onnx_bytes(model, example: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter is the one that honours SpaceToDepth's symbolic.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, example, buffer, input_names=["image"], output_names=["sharpened"],
            opset_version=OPSET, dynamo=False,
            dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                          "sharpened": {0: "batch", 2: "height", 3: "width"}},
        )
    return buffer.getvalue()


def max_parity_error(model, onnx_model: onnx.ModelProto, images: list[np.ndarray]) -> float:
    """Largest |torch − onnxruntime| over the given N×3×H×W batches."""
    session = ort.InferenceSession(onnx_model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch in images:
        with torch.no_grad():
            expected = model(torch.from_numpy(batch)).numpy()
        (got,) = session.run(None, {"image": batch})
        if got.shape != expected.shape:
            raise ExportError(f"ONNX output shape {got.shape} differs from torch's {expected.shape}")
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


def export_student(model, onnx_path, *, meta: dict | None = None,
                   check_image: np.ndarray | None = None) -> float:
    """Export, verify with onnxruntime, then write `onnx_path` atomically.

    Returns max |torch − onnx| over the checks; raises ExportError above 1e-4."""
    model = model.cpu().eval()
    if check_image is None:
        check_image = sample_photo(224, 320)
    h, w = check_image.shape[0] // 32 * 32, check_image.shape[1] // 32 * 32
    if h < 64 or w < 96:
        raise ExportError(f"check image {check_image.shape[:2]} is smaller than 64×96")
    photo = np.ascontiguousarray(check_image[:h, :w].transpose(2, 0, 1)[None], dtype=np.float32)
    # A second batch of another size and count proves the axes really are dynamic.
    other = np.ascontiguousarray(np.concatenate([photo, photo[..., ::-1]])[:, :, :64, :96])

    onnx_model = onnx.load_from_string(_onnx_bytes(model, torch.from_numpy(photo)))
    for key, value in metadata_for(model, meta or {}).items():
        onnx_model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    onnx.checker.check_model(onnx_model)

    error = max_parity_error(model, onnx_model, [photo, other])
    if not error <= PARITY_TOLERANCE:
        raise ExportError(f"ONNX output differs from torch by {error:.2e} (> {PARITY_TOLERANCE:g}); "
                          "nothing was written")
    write_atomically(Path(onnx_path), onnx_model.SerializeToString())
    return error


@dataclass
class Options:
    """Export a trained student to the ONNX file sharpcam runs."""
    checkpoint: str = option(MISSING, "a student checkpoint (student.pt) from training.distill", positional=True)
    output: str = option("student.onnx", "ONNX file to write", short="-o")


def main(argv=None):
    options = parse_options(Options, argv, __doc__.splitlines()[0])
    try:
        payload = load_checkpoint(options.checkpoint)
    except CheckpointError as e:
        sys.exit(f"training.export: error: {e}")
    if payload["arch"] != "residual_unet":
        sys.exit(f"training.export: error: {options.checkpoint} holds a {payload['arch']}; "
                 "only the student (residual_unet) is exported for sharpcam")
    model = ResidualUNet(**payload["config"])
    model.load_state_dict(payload["state_dict"])
    try:
        error = export_student(model, options.output, meta=payload.get("meta") or {})
    except ExportError as e:
        sys.exit(f"training.export: error: {e}")
    print(f"wrote {options.output} (preset {model.config.get('preset')}, "
          f"max |torch - onnx| = {error:.1e})")


if __name__ == "__main__":
    main()
