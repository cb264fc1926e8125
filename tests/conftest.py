"""Fixtures for the sharpcam tests: small student-like ONNX models built with onnx.helper."""
from __future__ import annotations

import json

import numpy as np
import pytest


def build_test_model(path, *, receptive_radius=12, size_multiple=4, metadata=True, seed=0,
                     channels=8):
    """Write a tiny residual encoder/decoder to ``path``.

    Two stride-2 convolutions, a ConvTranspose and a nearest Resize make the
    output depend on where a window starts (alignment to 4 pixels matters),
    and its receptive radius is about 11 pixels, declared as 12.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def weight(name, shape):
        fan_in = int(np.prod(shape[1:]))
        w = rng.normal(0, np.sqrt(2.0 / fan_in), shape).astype(np.float32)
        inits.append(numpy_helper.from_array(w, name))
        return name

    def conv(x, out, cin, cout, stride=1, relu=True):
        w = weight(out + "_w", (cout, cin, 3, 3))
        b = out + "_b"
        inits.append(numpy_helper.from_array(rng.normal(0, 0.05, cout).astype(np.float32), b))
        y = out + "_pre" if relu else out
        nodes.append(helper.make_node("Conv", [x, w, b], [y], kernel_shape=[3, 3],
                                      pads=[1, 1, 1, 1], strides=[stride, stride]))
        if relu:
            nodes.append(helper.make_node("Relu", [y], [out]))
        return out

    c = channels
    h = conv("image", "c1", 3, c)
    h = conv(h, "d1", c, c, stride=2)
    h = conv(h, "d2", c, c, stride=2)
    h = conv(h, "c2", c, c)
    wt = weight("u1_w", (c, c, 2, 2))
    nodes.append(helper.make_node("ConvTranspose", ["c2", wt], ["u1_pre"], strides=[2, 2],
                                  kernel_shape=[2, 2]))
    nodes.append(helper.make_node("Relu", ["u1_pre"], ["u1"]))
    inits.append(numpy_helper.from_array(np.array([], np.float32), "roi"))
    inits.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"))
    nodes.append(helper.make_node("Resize", ["u1", "roi", "scales"], ["u2"], mode="nearest"))
    h = conv("u2", "c3", c, 3, relu=False)
    inits.append(numpy_helper.from_array(np.array(0.2, np.float32), "gain"))
    nodes.append(helper.make_node("Mul", [h, "gain"], ["residual"]))
    nodes.append(helper.make_node("Add", ["image", "residual"], ["sharpened"]))

    dims = ["N", 3, "H", "W"]
    graph = helper.make_graph(
        nodes, "sharpcam_test_student",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("sharpened", TensorProto.FLOAT, dims)],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if metadata:
        props = {
            "sharpcam.arch": "test_unet",
            "sharpcam.preset": "test",
            "sharpcam.config": json.dumps({"channels": c}),
            "sharpcam.training": json.dumps({"note": "random weights, tests only"}),
            "sharpcam.receptive_radius": str(receptive_radius),
            "sharpcam.size_multiple": str(size_multiple),
        }
        helper.set_model_props(model, props)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="session")
def test_model(tmp_path_factory):
    return build_test_model(tmp_path_factory.mktemp("models") / "student_test.onnx")


@pytest.fixture(scope="session")
def engine(test_model):
    from sharpcam.engine import Engine
    with Engine(test_model, device="cpu", threads=2) as eng:
        yield eng
