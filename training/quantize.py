"""`python -m training.quantize student.onnx [-o student.int8.onnx]`: static INT8 for CPUs.

onnxruntime's static quantisation in QDQ form: int8 weights per output channel (8-bit;
`--reduce-range` makes them 7-bit, which onnxruntime suggests for CPUs without VNNI, whose
16-bit dot products can saturate), uint8 activations whose ranges come from calibration on
real photo crops that the student never trained on — scikit-image's held-out photos by
default, or the held-out split (same name hash as training) of `--calibration DIR`.

Only convolutions are quantised, where the arithmetic is (and the ReLUs after them, which
onnxruntime then folds into the convolution's output range); the full-resolution band
maths (luma, box filters, gain up-sampling, the sums) is memory-bound, gains nothing from
INT8 and must stay exact. Pixels stay fp32 too: every node whose output has the image's
own channel count (the final residual add, DepthToSpace back to RGB, ...), the stem (the
convolutions that read the frame or its luma, which the band maths share), the head
(the last convolution, predicting pixels or per-pixel gains), the convolutions whose
output reaches the head with no convolution between, and those of the frame context
(a 1×1 map of the whole frame's average) are excluded, so 8-bit rounding never lands on
the picture, or on what predicts it, directly.
`--keep-fp32 none` quantises those and every other op too; `--exclude` keeps more nodes
(names or op types).

The INT8 model keeps the contract (`image` in, `sharpened` out, dynamic N/H/W) and every
`sharpcam.*` metadata entry, and adds `sharpcam.precision=int8`, the SHA-256 of the fp32
file (sharpcam ignores a sibling made from another version) and the settings and checks.
It checks itself, both models run by sharpcam's own engine, and writes nothing unless
- PSNR of INT8 against fp32 output is at least `--min-psnr` (40) dB on every held-out
  photograph, whole, and
- on training.evaluate's held-out table (every degradation preset, PSNR against the sharp
  image), INT8 loses at most `--max-cost` (0.1) dB to fp32 on every row.
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import onnx
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quant_pre_process, quantize_static)

from sharpcam.atomic_file import write_atomically
from sharpcam.engine import Engine, ModelError
from sharpcam.engine_choice import SOURCE_HASH_KEY, file_sha256, int8_sibling
from training import data as datasets
from training import evaluate
from training.errors import reported_as_exit
from training.options import option, parse_options
from training.quality import psnr

# Issue #10's budget: INT8 may cost at most 0.1 dB of held-out PSNR on any preset of
# training.evaluate's table; measured directly, on both models, the way sharpcam runs them.
MAX_COST_DB = 0.1
HELD_OUT_PRESETS = evaluate.PRESETS
# A floor on whole photographs (other sizes than the table's 256×256 crops) that catches a
# broken quantisation early: 40 dB is an RMS difference of 1 % of the range, ~2.5 grey
# levels. Measured: the bundled student 60-76 dB on the four check photos; a student with
# a strong random residual (RMS 0.04) 60 dB; a fully random one 45 dB.
MIN_PSNR_DB = 40.0
# 8-bit weights by default. Measured on this project's AVX2 CPU without VNNI, where
# saturation would show: INT8 against fp32 output 60-91 dB on whole held-out photos with
# 8-bit weights, and on the held-out table the same student lost 0.40 dB on clean frames
# with 7-bit weights, 0.10 with 8-bit (MODEL_CARD.md, "Speed").
REDUCE_RANGE = False


class QuantizeError(RuntimeError):
    """The INT8 model would not do; nothing was written."""


@dataclass
class Options:
    """Static INT8 quantisation of a student ONNX file, checked against fp32."""
    model: str = option(MISSING, "the fp32 student ONNX file (from training.export)",
                        positional=True, metavar="STUDENT.onnx")
    output: Optional[str] = option(None, "INT8 file to write (default: STUDENT.int8.onnx beside it)",
                                   short="-o")
    calibration: Optional[str] = option(None, "folder of photos whose held-out split calibrates "
                                              "(default: scikit-image's held-out photos)")
    calibration_split: str = option("val", "which files of --calibration: the held-out split by "
                                           "the training name hash, or all (a folder of held-out images)",
                                    choices=["val", "all"])
    val_fraction: float = option(0.15, "the split used in training (by name hash)")
    crops: int = option(64, "calibration crops")
    crop: int = option(256, "calibration crop size (smaller photos give smaller crops)")
    keep_fp32: str = option("image", "image: nodes whose outputs have the image's channel count, "
                                     "the stem and the head stay fp32; none: quantise them too",
                            choices=["image", "none"])
    exclude: list[str] = option([], "more nodes to keep fp32, by node name or op type", nargs="*")
    reduce_range: bool = option(REDUCE_RANGE, "7-bit weights instead of 8 (no 16-bit saturation on "
                                              "CPUs without VNNI, twice the weight rounding)")
    min_psnr: float = option(MIN_PSNR_DB, "refuse below this PSNR (dB) of INT8 vs fp32 on any check photo")
    max_cost: float = option(MAX_COST_DB, "refuse if INT8 loses more held-out PSNR (dB) than this on any preset")
    presets: list[str] = option(list(HELD_OUT_PRESETS), "held-out degradation presets of the quality check")
    seed: int = option(0, "seed of the crop positions")


# --- calibration data ----------------------------------------------------------------


def calibration_files(folder: Optional[str], split: str = "val", val_fraction: float = 0.15) -> list[Path]:
    """Photos the student did not train on: the held-out split of `folder` (its corpus
    manifest's, else by name hash as training.data splits it), or all of it; else
    scikit-image's held-out photos."""
    if folder is None:
        return datasets.builtin_files("val")
    files = datasets.list_images(folder)
    if split == "all":
        return files
    rel = {str(f.relative_to(folder)): f for f in files}
    # A corpus built by training.corpus fixed its held-out photos in its manifest; the
    # name hash would pick others, some of them trained on.
    manifest = datasets.read_manifest(Path(folder))
    _, val = (datasets.manifest_split(manifest, rel, Path(folder)) if manifest is not None
              else datasets.split_names(list(rel), val_fraction))
    if not val:
        raise QuantizeError(f"--calibration {folder}: no held-out images (one image only?); "
                            "add images or pass --calibration-split all")
    return [rel[n] for n in val]


def random_crops(images: list[np.ndarray], count: int, size: int, multiple: int,
                 seed: int = 0) -> list[np.ndarray]:
    """`count` 1×3×h×w crops, h and w at most `size` and multiples of `multiple`, cycling
    over the images; images smaller than one `multiple` are skipped."""
    usable = [im for im in images if min(im.shape[:2]) >= multiple]
    if not usable:
        raise QuantizeError(f"no calibration image is at least {multiple}×{multiple} pixels")
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(count):
        image = usable[i % len(usable)]
        h = min(size, image.shape[0]) // multiple * multiple
        w = min(size, image.shape[1]) // multiple * multiple
        y = int(rng.integers(0, image.shape[0] - h + 1))
        x = int(rng.integers(0, image.shape[1] - w + 1))
        crops.append(as_batch(image[y:y + h, x:x + w]))
    return crops


def as_batch(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32)


def crop_reader(batches: list[np.ndarray]):
    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(batches)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"image": batch}

    return Reader()


# --- which nodes stay fp32 -----------------------------------------------------------

# Relu is there so that onnxruntime removes a ReLU that follows a quantised convolution and
# rounds the convolution's output on the ReLU's range [0, max]. Without it the output is
# rounded on its whole calibrated range, mostly negative values the ReLU then discards:
# the bundled student's residual block wrote [-173, 13], 0.73 per step, 18 levels for all
# that passes the ReLU, and INT8 lost 0.57 dB on the σ 0.5 protocol (0.06 with it).
QUANTIZED_OP_TYPES = ["Conv", "ConvTranspose", "Relu"]
CONVOLUTIONS = ("Conv", "ConvTranspose")


def tensor_shapes(model: onnx.ModelProto) -> dict[str, tuple[Optional[int], ...]]:
    """N, C, H, W of every 4-D tensor, as far as ONNX shape inference can tell (None: dynamic)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if len(dims) == 4:
            shapes[value.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
    return shapes


def frame_summary_convolutions(model: onnx.ModelProto, shapes: dict) -> list[str]:
    """Convolutions of a 1×1 map (`shapes` from `tensor_shapes`), whatever the frame's
    size: the frame context, which reads the whole frame's average. They cost nothing, and
    what they decide moves every pixel's gain: rounded, they cost the bundled student
    1.3 dB on clean frames."""
    return [n.name for n in model.graph.node
            if n.op_type in CONVOLUTIONS and shapes.get(n.input[0], (None,) * 4)[2:] == (1, 1)]


def stem_convolutions(model: onnx.ModelProto) -> list[str]:
    """The convolutions with no convolution before them: they read the frame (or its luma
    and band energies) itself. Quantising their input would quantise the luma that the
    full-resolution band maths share with them."""
    after_conv, stems = set(), []
    for node in model.graph.node:  # ONNX lists nodes in topological order
        downstream = any(i in after_conv for i in node.input)
        if node.op_type in CONVOLUTIONS and not downstream:
            stems.append(node.name)
        if downstream or node.op_type in CONVOLUTIONS:
            after_conv.update(node.output)
    return stems


def head_inputs(model: onnx.ModelProto, head: onnx.NodeProto) -> list[str]:
    """The convolutions whose output reaches `head` through other ops only (the last
    decoder's up-sampling, through the skip's Add and a ReLU). Calibrated on its whole
    range, such an output is rounded in steps set by values that the ReLU before the head
    discards: the bundled student's last up-sampling wrote [-48, 2.8] beside a skip of
    [0, 2.7], and rounding it cost 0.3 dB on clean frames."""
    producer = {o: n for n in model.graph.node for o in n.output}
    found, seen = [], set()
    pending = [head.input[0]]
    while pending:
        node = producer.get(pending.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type in CONVOLUTIONS:
            found.append(node.name)
        else:
            pending.extend(node.input)
    return found


def pixel_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes whose every output is a 4-D tensor with the input image's channel count, the
    stem convolutions, the last convolution (the head), whatever its channel count: it
    predicts the pixels or the per-pixel gains themselves (two gain maps for a two-band
    student), the convolutions that feed the head directly, and those of a 1×1 frame summary."""
    shapes = tensor_shapes(model)
    channels = shapes.get(model.graph.input[0].name, (None, 3))[1] or 3
    chosen = [n.name for n in model.graph.node
              if n.output and all(shapes.get(o, (None, None))[1] == channels for o in n.output)]
    chosen += stem_convolutions(model)
    convolutions = [n for n in model.graph.node if n.op_type in CONVOLUTIONS]
    if convolutions:
        # ONNX lists nodes in topological order: the last convolution is the head.
        # (nodes_to_exclude drops repeats, e.g. a head with the image's channel count.)
        head = convolutions[-1]
        chosen += [head.name, *head_inputs(model, head)]
    return chosen + frame_summary_convolutions(model, shapes)


def nodes_to_exclude(model: onnx.ModelProto, keep_fp32: str, exclude: list[str]) -> list[str]:
    names = {n.name for n in model.graph.node}
    types = {n.op_type for n in model.graph.node}
    unknown = [e for e in exclude if e not in names and e not in types]
    if unknown:
        raise QuantizeError(f"--exclude {' '.join(unknown)}: no node has that name or op type "
                            f"(op types here: {', '.join(sorted(types))})")
    chosen = pixel_nodes(model) if keep_fp32 == "image" else []
    chosen += [n.name for n in model.graph.node if n.name in exclude or n.op_type in exclude]
    return list(dict.fromkeys(chosen))


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give unnamed nodes a name: exclusion works by name."""
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    return model


# --- quantisation --------------------------------------------------------------------


def preprocess(model: onnx.ModelProto, workdir: Path) -> onnx.ModelProto:
    """onnxruntime's pre-processing (graph optimisation and shape inference); the symbolic
    shape inference gives up on dynamic SpaceToDepth, ONNX's own does the work."""
    src, dst = workdir / "fp32.onnx", workdir / "pre.onnx"
    onnx.save(model, src)
    quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
    return name_nodes(onnx.load(dst))


def quantize(model: onnx.ModelProto, crops: list[np.ndarray], exclude: list[str],
             workdir: Path, op_types: Optional[list[str]] = QUANTIZED_OP_TYPES,
             reduce_range: bool = REDUCE_RANGE) -> onnx.ModelProto:
    """QDQ INT8 of the `op_types` nodes (None: every op onnxruntime can quantise)."""
    src, dst = workdir / "to_quantize.onnx", workdir / "int8.onnx"
    onnx.save(model, src)
    quantize_static(
        str(src), str(dst), crop_reader(crops), quant_format=QuantFormat.QDQ,
        per_channel=True, reduce_range=reduce_range,
        # uint8 activations × int8 weights is the pair onnxruntime's CPU kernels fuse into
        # QLinearConv; int8 activations leave most convs as DequantizeLinear + fp32 Conv.
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=exclude,
        op_types_to_quantize=op_types)
    return onnx.load(dst)


def with_metadata(int8: onnx.ModelProto, fp32: onnx.ModelProto, extra: dict[str, str]) -> onnx.ModelProto:
    """The fp32 model's `sharpcam.*` entries, then `extra` (precision, provenance)."""
    entries = {p.key: p.value for p in fp32.metadata_props if p.key.startswith("sharpcam.")}
    entries.update(extra)
    del int8.metadata_props[:]
    onnx.helper.set_model_props(int8, entries)
    return int8


# --- the checks ----------------------------------------------------------------------


def check_contract(int8: onnx.ModelProto) -> None:
    """`image` in, `sharpened` out, N, H and W still dynamic (sharpcam's Engine checks the rest)."""
    graph = int8.graph
    if [i.name for i in graph.input] != ["image"] or [o.name for o in graph.output] != ["sharpened"]:
        raise QuantizeError("the INT8 graph lost the `image` -> `sharpened` contract")
    for value in (graph.input[0], graph.output[0]):
        dims = value.type.tensor_type.shape.dim
        if len(dims) != 4 or any(dims[i].HasField("dim_value") for i in (0, 2, 3)):
            raise QuantizeError(f"the INT8 graph's `{value.name}` lost its dynamic N, H and W")


def check_photos(multiple: int) -> list[tuple[str, np.ndarray]]:
    """scikit-image's held-out photographs, whole, cut to the size multiple."""
    photos = []
    for path in datasets.builtin_files("val"):
        image = datasets.read_image(path)
        h, w = image.shape[0] // multiple * multiple, image.shape[1] // multiple * multiple
        photos.append((path.stem, as_batch(image[:h, :w])))
    return photos


def compare(fp32, int8, photos: list[tuple[str, np.ndarray]]) -> list[dict]:
    """PSNR (dB) and max |difference| of INT8 against fp32 output (sharpcam engines), both
    clipped to [0, 1] as sharpcam's uint8 conversion does, per photo."""
    rows = []
    for name, batch in photos:
        ref, got = (np.clip(engine.run(batch), 0.0, 1.0) for engine in (fp32, int8))
        rows.append(dict(photo=name, psnr_db=round(psnr(ref, got), 2),
                         max_abs_diff=round(float(np.abs(got - ref).max()), 5)))
    return rows


def held_out_quality(fp32, int8, presets: list[str], seed: int = 0) -> dict:
    """training.evaluate's held-out table (PSNR/SSIM against the sharp image, sharpcam's
    uint8 path) for both models: {preset: {"fp32": {...}, "int8": {...}}}."""
    images = [datasets.read_image(p) for p in datasets.builtin_files("val")]
    pairs = evaluate.build_pairs(images, 256, presets, seed)
    table = evaluate.evaluate(pairs, {"fp32": evaluate.sharpcam_restorer(fp32),
                                      "int8": evaluate.sharpcam_restorer(int8)})
    return {preset: {k: {m: round(row[k][m], 4) for m in ("psnr", "ssim")} for k in ("fp32", "int8")}
            for preset, row in table.items()}


def worst_cost(quality: dict) -> tuple[str, float]:
    """The preset where INT8 loses most PSNR to fp32, and that loss in dB."""
    preset = max(quality, key=lambda p: quality[p]["fp32"]["psnr"] - quality[p]["int8"]["psnr"])
    return preset, quality[preset]["fp32"]["psnr"] - quality[preset]["int8"]["psnr"]


# --- command line --------------------------------------------------------------------


def quantize_student(opts: Options) -> tuple[Path, dict]:
    """Quantise, check, write; returns (path written, the settings and check results)."""
    fp32 = onnx.load(opts.model)
    meta = {p.key: p.value for p in fp32.metadata_props}
    multiple = int(meta.get("sharpcam.size_multiple", 32))
    files = calibration_files(opts.calibration, opts.calibration_split, opts.val_fraction)
    _, images = datasets.load_images(files, "calibration images")
    crops = random_crops(images, opts.crops, opts.crop, multiple, opts.seed)
    with tempfile.TemporaryDirectory(prefix="sharpcam-quantize.") as tmp:
        prepared = preprocess(fp32, Path(tmp))
        exclude = nodes_to_exclude(prepared, opts.keep_fp32, opts.exclude)
        int8 = quantize(prepared, crops, exclude, Path(tmp),
                        QUANTIZED_OP_TYPES if opts.keep_fp32 == "image" else None, opts.reduce_range)
        check_contract(int8)
        settings = dict(calibration=opts.calibration or "scikit-image held-out photos",
                        calibration_files=[f.name for f in files], crops=len(crops), crop=opts.crop,
                        method="MinMax", per_channel=True, reduce_range=opts.reduce_range, activations="uint8",
                        weights="int8", kept_fp32=exclude)
        int8 = with_metadata(int8, fp32, {"sharpcam.precision": "int8",
                                          SOURCE_HASH_KEY: file_sha256(opts.model)})
        candidate = Path(tmp) / "candidate.int8.onnx"
        onnx.save(int8, candidate)
        try:
            engines = [Engine(path, device="cpu") for path in (opts.model, candidate)]
        except ModelError as e:
            raise QuantizeError(str(e)) from None
        settings["check"] = compare(*engines, check_photos(multiple))
        worst = min(settings["check"], key=lambda r: r["psnr_db"])
        if not worst["psnr_db"] >= opts.min_psnr:
            raise QuantizeError(
                f"INT8 output differs from fp32 on {worst['photo']}: PSNR {worst['psnr_db']:.1f} dB < "
                f"{opts.min_psnr:g} dB (max |diff| {worst['max_abs_diff']:.4f}); nothing was written - "
                "keep more nodes fp32 with --exclude NODE_OR_OP_TYPE")
        settings["held_out"] = held_out_quality(*engines, opts.presets, opts.seed)
        preset, cost = worst_cost(settings["held_out"])
        if not cost <= opts.max_cost:
            raise QuantizeError(
                f"INT8 costs {cost:.3f} dB of held-out PSNR on '{preset}' (> {opts.max_cost:g} dB); "
                "nothing was written - keep more nodes fp32 with --exclude NODE_OR_OP_TYPE")
    int8 = with_metadata(int8, fp32, {"sharpcam.precision": "int8",
                                      SOURCE_HASH_KEY: file_sha256(opts.model),
                                      "sharpcam.quantization": json.dumps(settings)})
    onnx.checker.check_model(int8)
    out = Path(opts.output or int8_sibling(opts.model))
    write_atomically(out, int8.SerializeToString())
    return out, settings


def main(argv=None):
    opts = parse_options(Options, argv, __doc__.splitlines()[0])
    if opts.crops < 1 or opts.crop < 1:
        sys.exit("training.quantize: error: --crops and --crop must be positive")
    unknown = sorted(set(opts.presets) - set(HELD_OUT_PRESETS))
    if unknown or not opts.presets:
        sys.exit(f"training.quantize: error: --presets {' '.join(unknown)}: choose from "
                 f"{', '.join(HELD_OUT_PRESETS)}")
    if not Path(opts.model).is_file():
        sys.exit(f"training.quantize: error: {opts.model} is not a file (pass the fp32 student .onnx)")
    try:
        with reported_as_exit():
            out, settings = quantize_student(opts)
    except QuantizeError as e:
        sys.exit(f"training.quantize: error: {e}")
    print(f"kept fp32: {', '.join(settings['kept_fp32']) or 'nothing'}")
    for r in settings["check"]:
        print(f"{r['photo']:>8}: PSNR(int8, fp32) {r['psnr_db']:6.2f} dB, max |diff| {r['max_abs_diff']:.4f}")
    print(f"{'held-out':<10} {'fp32 PSNR/SSIM':>16} {'int8 PSNR/SSIM':>16} {'cost dB':>8}")
    for preset, row in settings["held_out"].items():
        f, q = row["fp32"], row["int8"]
        print(f"{preset:<10} {f['psnr']:>8.2f} /{f['ssim']:.4f} {q['psnr']:>8.2f} /{q['ssim']:.4f} "
              f"{f['psnr'] - q['psnr']:>8.3f}")
    print(f"wrote {out} (PSNR(int8, fp32) >= {opts.min_psnr:g} dB on every held-out photo, "
          f"held-out PSNR cost <= {opts.max_cost:g} dB on every preset)")


if __name__ == "__main__":
    main()
