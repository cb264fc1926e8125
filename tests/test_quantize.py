"""training.quantize: the INT8 model keeps the contract, stays close to fp32 on a real
photograph, keeps the pixels fp32, and nothing is written when it would not do."""
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from models import build_student
from sharpcam import ASSETS_DIR
from sharpcam.engine_choice import SOURCE_HASH_KEY, file_sha256, int8_sibling
from training.export import export_student
from training.options import parse_options
from training.quality import psnr
from training.quantize import main as quantize_main
from training.quantize import (HELD_OUT_PRESETS, MAX_COST_DB, MIN_PSNR_DB, Options, QuantizeError,
                               calibration_files, quantize_student, random_crops)

FAST = dict(crops=4, crop=128, presets=["clean", "gaussian"])


def sharpening_student(seed=0, scale=0.3):
    """The realtime student with a random head: not the identity, a residual of RMS ~0.04
    on photos (a strong sharpener). The residual branches that start at zero get small
    random weights too, so that every quantised layer reaches the output."""
    torch.manual_seed(seed)
    model = build_student("realtime")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "conv2" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
        # Features reach the head at unit scale: small weights, gains of a few tenths.
        model.head.weight.copy_(torch.randn(model.head.weight.shape, generator=generator) * scale / 3)
        model.head.bias.copy_(torch.randn(model.head.bias.shape, generator=generator) * scale * 3)
    return model.eval()


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    folder = tmp_path_factory.mktemp("quantize")
    fp32 = folder / "student.onnx"
    export_student(sharpening_student(), fp32, meta={"steps": 3})
    out, settings = quantize_student(Options(model=str(fp32), **FAST))
    return fp32, out, settings


def photograph():
    """scikit-image's chelsea (held out from training), cut to a multiple of 32."""
    from skimage import data
    image = data.chelsea()[:288, :448].astype(np.float32) / 255.0
    return np.ascontiguousarray(image.transpose(2, 0, 1)[None])


def test_int8_is_written_beside_fp32_with_the_contract_and_metadata(quantized):
    fp32, out, _ = quantized
    assert out == Path(int8_sibling(fp32)) and out.name == "student.int8.onnx"
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (inp,), (outp,) = session.get_inputs(), session.get_outputs()
    assert inp.name == "image" and inp.type == "tensor(float)"
    assert outp.name == "sharpened" and outp.type == "tensor(float)"
    assert inp.shape[1] == 3 and all(isinstance(d, str) for d in (inp.shape[0], *inp.shape[2:]))
    x = np.random.default_rng(0).random((2, 3, 64, 96), dtype=np.float32)
    assert session.run(None, {"image": x})[0].shape == x.shape
    meta = session.get_modelmeta().custom_metadata_map
    fp32_meta = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).get_modelmeta()
    for key, value in fp32_meta.custom_metadata_map.items():
        assert meta[key] == value
    assert json.loads(meta["sharpcam.training"]) == {"steps": 3}
    assert meta["sharpcam.precision"] == "int8"
    assert meta[SOURCE_HASH_KEY] == file_sha256(fp32)


def test_int8_really_is_quantised_but_keeps_the_pixels_fp32(quantized):
    _, out, settings = quantized
    model = onnx.load(out)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") >= 1 and ops.count("DequantizeLinear") >= 10
    int8_weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8 and t.dims]
    assert len(int8_weights) >= 10
    # The residual add reads the input image itself and writes the output, both fp32.
    (last,) = [n for n in model.graph.node if "sharpened" in n.output]
    assert last.op_type == "Add" and "image" in last.input
    # The head predicts per-pixel gains: kept fp32, like every node of the band maths.
    assert "/head/Conv" in settings["kept_fp32"]
    produced_by = {o: n.op_type for n in model.graph.node for o in n.output}
    band_maths = [n for n in model.graph.node if n.op_type in ("AveragePool", "Resize", "MatMul", "Mul")]
    assert band_maths and all(produced_by.get(i) != "DequantizeLinear" for n in band_maths for i in n.input)


def test_int8_agrees_with_fp32_on_a_photograph(quantized):
    fp32, out, settings = quantized
    photo = photograph()
    ref, got = (np.clip(ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
                        .run(None, {"image": photo})[0], 0, 1) for p in (fp32, out))
    assert psnr(photo, ref) < 40  # the student really changes the photo
    assert MIN_PSNR_DB <= psnr(ref, got) < 100  # close to fp32, and not fp32 itself
    assert np.abs(got - ref).max() < 0.05
    assert min(r["psnr_db"] for r in settings["check"]) >= MIN_PSNR_DB
    for row in settings["held_out"].values():
        assert row["fp32"]["psnr"] - row["int8"]["psnr"] <= 0.1


def test_refuses_and_writes_nothing_below_the_tolerance(tmp_path, quantized):
    fp32, _, _ = quantized
    out = tmp_path / "out.int8.onnx"
    with pytest.raises(QuantizeError, match="nothing was written"):
        quantize_student(Options(model=str(fp32), output=str(out), min_psnr=200, **FAST))
    with pytest.raises(QuantizeError, match="held-out PSNR"):
        quantize_student(Options(model=str(fp32), output=str(out), max_cost=-1, **FAST))
    assert list(tmp_path.iterdir()) == []


def test_quantising_the_pixels_too_costs_quality(tmp_path, quantized):
    fp32, _, kept = quantized
    # No quality budget here: the question is how far from fp32 it lands, not whether it ships.
    _, everything = quantize_student(Options(model=str(fp32), output=str(tmp_path / "all.onnx"),
                                             keep_fp32="none", max_cost=100, **FAST))
    assert everything["kept_fp32"] == []
    worst = min(r["psnr_db"] for r in everything["check"])
    assert worst + 3 < min(r["psnr_db"] for r in kept["check"])


def test_the_frame_context_and_what_feeds_the_head_stay_fp32(quantized):
    _, out, settings = quantized
    kept = set(settings["kept_fp32"])
    # The context's convolutions read the whole frame's 1×1 average; the last
    # up-sampling reaches the head through the skip's Add and a ReLU only.
    assert {"/context/conv1/Conv", "/context/conv2/Conv", "/decoders.1/up/ConvTranspose"} <= kept
    model = onnx.load(out)
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.name in kept and node.op_type in ("Conv", "ConvTranspose"):
            # Input and weight (the untrained fixture's zero biases are one shared initializer).
            assert all(producer.get(i) != "DequantizeLinear" for i in node.input[:2]), node.name
    # The encoder's convolutions (the bulk of the arithmetic) are quantised.
    quantized_convs = [n.name for n in model.graph.node if n.op_type == "Conv"
                       and producer.get(n.input[1]) == "DequantizeLinear"]
    assert "/encoders.1/encoders.1.0/Conv" in quantized_convs


def test_relus_after_convolutions_fold_into_their_rounding(tmp_path, monkeypatch):
    """Rounded on its whole range, a convolution's output spends most of its 256 levels on
    negative values that the ReLU after it discards; folded, the ReLU's [0, max] gets them all."""
    from onnx import numpy_helper

    from sharpcam import DEFAULT_MODEL
    from training import quantize

    fp32 = onnx.load(str(DEFAULT_MODEL))
    fp32_producer = {o: n for n in fp32.graph.node for o in n.output}
    before_relu = {fp32_producer[n.input[0]].name for n in fp32.graph.node
                   if n.op_type == "Relu" and fp32_producer.get(n.input[0]) is not None
                   and fp32_producer[n.input[0]].op_type == "Conv"}

    def check_psnr_and_zero_points(name):
        """The check's PSNR per photo, and the uint8 zero point each convolution's output is rounded with."""
        _, settings = quantize_student(Options(model=str(DEFAULT_MODEL), output=str(tmp_path / name),
                                               max_cost=100, min_psnr=0, **FAST))
        model = onnx.load(tmp_path / name)
        producer = {o: n for n in model.graph.node for o in n.output}
        constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        zero_points = {producer[n.input[0]].name: int(constants[n.input[2]]) for n in model.graph.node
                       if n.op_type == "QuantizeLinear" and producer.get(n.input[0]) is not None
                       and producer[n.input[0]].op_type == "Conv"}
        relus = [n.name for n in model.graph.node if n.op_type == "Relu"]
        return np.array([r["psnr_db"] for r in settings["check"]]), zero_points, relus

    folded, folded_zero, relus_left = check_psnr_and_zero_points("folded.onnx")
    monkeypatch.setattr(quantize, "QUANTIZED_OP_TYPES", ["Conv", "ConvTranspose"])
    unfolded, unfolded_zero, _ = check_psnr_and_zero_points("unfolded.onnx")
    quantized_before_relu = before_relu & set(folded_zero)
    assert quantized_before_relu  # the UNet's encoder convolutions
    # Their ReLUs are gone into the rounding (the fp32 ones, e.g. the frame context's, stay).
    assert len(relus_left) == sum(n.op_type == "Relu" for n in fp32.graph.node) - len(quantized_before_relu)
    # Folded, the range starts at 0 (zero point 0); unfolded, a share of the levels sits below it.
    assert all(folded_zero[c] == 0 < unfolded_zero[c] for c in quantized_before_relu)
    # Measured on the bundled students: 0.3–1.5 dB closer to fp32 on average over the check photos.
    assert (folded - unfolded).mean() > 0


def test_command_line_refusal_is_one_line(tmp_path, quantized, capsys):
    fp32, _, _ = quantized
    out = tmp_path / "x.onnx"
    with pytest.raises(SystemExit) as stop:  # a string exit code: Python prints it alone, no traceback
        quantize_main([str(fp32), "-o", str(out), "--crops", "2", "--presets", "clean", "--min-psnr", "200"])
    message = str(stop.value.code)
    assert "\n" not in message and message.startswith("training.quantize: error: INT8 output differs")
    assert capsys.readouterr().out == ""
    assert list(tmp_path.iterdir()) == []


def test_options_take_the_model_as_argument_and_o_for_the_output():
    opts = parse_options(Options, ["m.onnx", "-o", "q.onnx", "--exclude", "Add", "/head/Conv"])
    assert (opts.model, opts.output, opts.exclude, opts.keep_fp32) == ("m.onnx", "q.onnx",
                                                                       ["Add", "/head/Conv"], "image")
    with pytest.raises(SystemExit):
        parse_options(Options, [])


def test_calibration_uses_only_the_held_out_split_of_a_folder(tmp_path):
    import cv2
    from training.data import split_names
    names = [f"img{i:02d}.png" for i in range(20)]
    for name in names:
        cv2.imwrite(str(tmp_path / name), np.zeros((40, 40, 3), np.uint8))
    train, val = split_names(names)
    files = calibration_files(str(tmp_path), "val")
    assert sorted(f.name for f in files) == sorted(val) and not set(val) & set(train)
    assert len(calibration_files(str(tmp_path), "all")) == 20
    from training.data import BUILTIN_TRAIN
    assert not {f.name for f in calibration_files(None)} & set(BUILTIN_TRAIN)


def test_calibration_keeps_the_held_out_photos_a_corpus_manifest_names(tmp_path):
    import cv2
    names = [f"img{i:02d}.png" for i in range(20)]
    for name in names:
        cv2.imwrite(str(tmp_path / name), np.zeros((40, 40, 3), np.uint8))
    held_out = ["img03.png", "img11.png"]  # not what the name hash would pick
    (tmp_path / "manifest.json").write_text(json.dumps({"files": [
        {"file": n, "split": "val" if n in held_out else "train"} for n in names]}))
    assert sorted(f.name for f in calibration_files(str(tmp_path), "val")) == held_out


def test_crops_are_multiples_of_the_model_size_multiple():
    images = [np.zeros((300, 451, 3), np.float32), np.zeros((70, 500, 3), np.float32),
              np.zeros((10, 10, 3), np.float32)]
    crops = random_crops(images, 6, 256, 32)
    assert [c.shape for c in crops] == [(1, 3, 256, 256), (1, 3, 64, 256)] * 3
    with pytest.raises(QuantizeError):
        random_crops(images[2:], 1, 256, 32)


def test_the_bundled_int8_sibling_comes_from_the_bundled_fp32_and_kept_its_budget():
    """sharpcam/assets ships student.int8.onnx beside student.onnx; it must come from that
    very fp32 file, and the quantiser's own held-out check must have stayed in budget."""
    fp32 = Path(ASSETS_DIR) / "student.onnx"
    int8 = Path(int8_sibling(fp32))
    assert int8.is_file(), "run `python -m training.quantize sharpcam/assets/student.onnx --calibration data/photos`"
    meta = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    assert meta["sharpcam.precision"] == "int8"
    assert meta[SOURCE_HASH_KEY] == file_sha256(fp32), (
        "sharpcam/assets/student.onnx changed: re-run `python -m training.quantize "
        "sharpcam/assets/student.onnx --calibration data/photos`")
    settings = json.loads(meta["sharpcam.quantization"])
    assert set(settings["held_out"]) == set(HELD_OUT_PRESETS)
    for row in settings["held_out"].values():
        assert row["fp32"]["psnr"] - row["int8"]["psnr"] <= MAX_COST_DB
    # And it is quantised, not fp32 under another name.
    model = onnx.load(int8)
    assert sum(n.op_type == "DequantizeLinear" for n in model.graph.node) >= 10
