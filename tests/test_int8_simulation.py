"""training.int8_simulation: the PyTorch rounding reproduces onnxruntime's INT8 student,
covers the convolutions training.quantize quantises, and lets gradients through."""
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from models import load_student
from sharpcam import DEFAULT_MODEL
from training import data as datasets
from training.int8_simulation import Int8Simulation, fake_quantize_weight
from training.quantize import Options, calibration_files, quantize_student, random_crops
from test_quantize import FAST, photograph


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The shipped student, its INT8 file from training.quantize, and the crops it calibrated on."""
    folder = tmp_path_factory.mktemp("simulation")
    fp32 = folder / "student.onnx"
    shutil.copy(DEFAULT_MODEL, fp32)
    int8, settings = quantize_student(Options(model=str(fp32), max_cost=100, **FAST))
    _, images = datasets.load_images(calibration_files(None), "calibration images")
    crops = random_crops(images, FAST["crops"], FAST["crop"], 16, seed=0)
    return fp32, int8, crops


def run_onnx(path, image):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": image})[0]


def test_the_simulation_reproduces_onnxruntime_int8(pair):
    fp32, int8, crops = pair
    student = load_student(fp32)
    simulation = Int8Simulation(student)
    simulation.calibrate([torch.from_numpy(c) for c in crops])
    photo = photograph()
    reference, quantized = run_onnx(fp32, photo), run_onnx(int8, photo)
    with torch.no_grad():
        simulated = simulation(torch.from_numpy(photo)).numpy()
    # INT8 moves the output; the simulation moves it the same way, to within fp32 noise.
    moved = np.sqrt(np.mean((reference - quantized) ** 2))
    assert moved > 1e-4
    assert np.sqrt(np.mean((simulated - quantized) ** 2)) < moved / 3


def test_it_rounds_the_convolutions_training_quantize_quantises(pair):
    fp32, int8, _ = pair
    model = onnx.load(int8)
    producer = {o: n for n in model.graph.node for o in n.output}
    # A quantised convolution reads its weight through a DequantizeLinear of the int8
    # initializer "<module>.weight_quantized" (ONNX keeps PyTorch's parameter names).
    quantized = [producer[n.input[1]].input[0].removesuffix(".weight_quantized") for n in model.graph.node
                 if n.op_type in ("Conv", "ConvTranspose") and n.input[1] in producer
                 and producer[n.input[1]].op_type == "DequantizeLinear"]
    simulation = Int8Simulation(load_student(fp32))
    assert quantized and sorted(quantized) == sorted(simulation.convolutions)


def test_weights_round_per_output_channel_and_gradients_pass_straight_through(pair):
    fp32, _, crops = pair
    student = load_student(fp32).train()
    simulation = Int8Simulation(student)
    with pytest.raises(RuntimeError, match="calibrate"):
        simulation(torch.from_numpy(crops[0]))
    simulation.calibrate([torch.from_numpy(c) for c in crops])

    weight = torch.tensor([[1.0, 0.5, 0.3], [100.0, 50.0, 1.0]]).reshape(2, 3, 1, 1)
    rounded = fake_quantize_weight(weight, transposed=False)
    levels = (rounded / rounded.abs().amax(dim=(1, 2, 3), keepdim=True)).flatten()
    # Each channel keeps its own scale: the small channel is not flattened to zero.
    assert rounded[0].abs().min() > 0 and not torch.equal(rounded, weight)
    assert torch.allclose(levels * 64, (levels * 64).round(), atol=1e-4) or \
        torch.allclose(levels * 127, (levels * 127).round(), atol=1e-4)

    simulation(torch.from_numpy(np.concatenate(crops[:2]))).mean().backward()
    modules = dict(student.named_modules())
    for name in simulation.convolutions:
        assert modules[name].weight.grad is not None and modules[name].weight.grad.abs().sum() > 0
