"""onnxruntime's static INT8 of a student, simulated in PyTorch, for quantisation-aware fine-tuning.

`training.quantize` rounds a student the way onnxruntime's QDQ quantiser does: the
convolutions between the stem and the head get int8 weights per output channel on
255 levels (−127…127; 129 with `reduce_range`), and every tensor such a convolution reads or writes
is rounded to uint8, one calibrated range per tensor, for all its readers (a ReLU right
after a convolution is folded into the rounding of its output). A student trained in
floating point never saw that rounding, and its gains, which follow a frame-wide
judgement, move with it. `Int8Simulation` wraps a student and runs it with the same
rounding and straight-through gradients, so the float weights learn to live with it:
`training.distill --int8-aware` trains through it. The student itself is untouched: its
weights, checkpoints and ONNX export stay fp32, and `training.quantize` then quantises
it as usual.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from training.quantize import REDUCE_RANGE

# onnxruntime's levels for training.quantize's settings: weights int8, symmetric (zero
# point 0), 7-bit with reduce_range; activations uint8, asymmetric, on the calibrated range
# widened to include 0.
WEIGHT_LEVELS = (-64, 64) if REDUCE_RANGE else (-127, 127)
ACTIVATION_LEVELS = (0, 255)
CONVOLUTIONS = (nn.Conv2d, nn.ConvTranspose2d)


def quantized_convolutions(student: nn.Module) -> list[str]:
    """The convolutions `training.quantize` rounds by default, in the order they run: not
    the stem (the first, reading the luma and band energies), not the head (the last),
    not the last decoder's up-sampling (its output reaches the head through the skip's
    Add and a ReLU only) and not the frame context's (they read a 1×1 map)."""
    names = [name for name, module in student.named_modules() if isinstance(module, CONVOLUTIONS)]
    decoders = getattr(student, "decoders", None)
    head_feeder = f"decoders.{len(decoders) - 1}.up" if decoders else None
    return [n for n in names[1:-1] if n != head_feeder and not n.startswith("context.")]


def fake_quantize_weight(weight: torch.Tensor, transposed: bool) -> torch.Tensor:
    """Per output channel, symmetric, on `WEIGHT_LEVELS` (ConvTranspose2d keeps its output
    channels on axis 1)."""
    axis = 1 if transposed else 0
    dims = [d for d in range(weight.dim()) if d != axis]
    absmax = weight.detach().abs().amax(dim=dims).clamp_min(1e-12)
    scale = (absmax * 2 / (WEIGHT_LEVELS[1] - WEIGHT_LEVELS[0])).float()
    zero = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(weight, scale, zero, axis, *WEIGHT_LEVELS)


def activation_scale(low: float, high: float) -> tuple[float, int]:
    """onnxruntime's uint8 scale and zero point for a calibrated range [low, high]."""
    low, high = min(low, 0.0), max(high, 0.0)
    scale = (high - low) / (ACTIVATION_LEVELS[1] - ACTIVATION_LEVELS[0])
    if scale <= 0:
        return 1.0, 0
    return scale, int(round(ACTIVATION_LEVELS[0] - low / scale))


class Int8Simulation(nn.Module):
    """Runs `student` with onnxruntime's INT8 rounding; `calibrate` it first.

    Where the rounding goes is found by running the student once: each input of a
    quantised convolution is traced back to the module that produced it and rounded
    there, for every reader (or, when no module did, e.g. a concatenation inside a
    forward, where the convolution reads it); each output is rounded where the
    convolution writes it, or after the ReLU that follows it."""

    def __init__(self, student: nn.Module):
        super().__init__()
        self.student = student
        self.convolutions = quantized_convolutions(student)
        self.ranges: dict[str, list[float]] = {}  # site -> calibrated [low, high]
        self._hooks = []
        self.sites = self._find_sites()

    # --- where the rounding goes ------------------------------------------------------

    def _find_sites(self) -> list[str]:
        """Module names (their output is rounded) and "NAME:input" (a convolution's input)."""
        events: list[tuple[str, torch.Tensor]] = []  # (leaf module, its output), in order
        inputs: dict[str, torch.Tensor] = {}
        hooks = []

        def record(name):
            def hook(module, args, output):
                events.append((name, output))  # holding the tensor keeps its id unique
            return hook

        def read(name):
            def hook(module, args):
                inputs[name] = args[0]
            return hook

        for name, module in self.student.named_modules():
            if name and not list(module.children()):
                hooks.append(module.register_forward_hook(record(name)))
            if name in self.convolutions:
                hooks.append(module.register_forward_pre_hook(read(name)))
        multiple = getattr(self.student, "size_multiple", 32)
        was_training = self.student.training
        try:
            with torch.no_grad():
                self.student.eval()(torch.rand(1, 3, 2 * multiple, 2 * multiple))
        finally:
            for h in hooks:
                h.remove()
            self.student.train(was_training)

        modules = dict(self.student.named_modules())
        sites = []
        for conv in self.convolutions:
            producers = [name for name, out in events if out is inputs[conv] and name != conv]
            # The last module to hand the tensor on (an in-place ReLU returns its input).
            sites.append(producers[-1] if producers else conv + ":input")
            written = next(i for i, (name, _) in enumerate(events) if name == conv)
            after = [name for name, out in events[written + 1:] if out is events[written][1]]
            relu = after[0] if after and isinstance(modules[after[0]], nn.ReLU) else None
            sites.append(relu or conv)
        return list(dict.fromkeys(sites))

    def _install(self, transform) -> None:
        modules = dict(self.student.named_modules())
        for site in self.sites:
            if site.endswith(":input"):
                def pre(module, args, site=site):
                    return (transform(site, args[0]), *args[1:])
                self._hooks.append(modules[site.removesuffix(":input")].register_forward_pre_hook(pre))
            else:
                def hook(module, args, output, site=site):
                    return transform(site, output)
                self._hooks.append(modules[site].register_forward_hook(hook))

    def _remove(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    # --- calibration and the rounded forward -------------------------------------------

    @torch.no_grad()
    def calibrate(self, batches) -> None:
        """Each site's range: min and max over `batches` through the float student, as
        onnxruntime's MinMax calibration takes them."""
        def observe(site, tensor):
            low, high = float(tensor.min()), float(tensor.max())
            seen = self.ranges.get(site, [low, high])
            self.ranges[site] = [min(low, seen[0]), max(high, seen[1])]
            return tensor

        was_training = self.student.training
        self.student.eval()
        self._install(observe)
        try:
            for batch in batches:
                self.student(batch)
        finally:
            self._remove()
            self.student.train(was_training)

    def _round(self, site: str, tensor: torch.Tensor) -> torch.Tensor:
        scale, zero = activation_scale(*self.ranges[site])
        return torch.fake_quantize_per_tensor_affine(tensor, scale, zero, *ACTIVATION_LEVELS)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if not set(self.sites) <= set(self.ranges):
            raise RuntimeError("Int8Simulation.calibrate(batches) first: the activation ranges are unknown")
        modules = dict(self.student.named_modules())
        weights = {f"{name}.weight": fake_quantize_weight(modules[name].weight,
                                                          isinstance(modules[name], nn.ConvTranspose2d))
                   for name in self.convolutions}
        self._install(self._round)
        try:
            return functional_call(self.student, weights, (image,), strict=False)
        finally:
            self._remove()
