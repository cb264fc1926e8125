"""The Residual UNet student: the network SharpCam runs on every frame.

One class, `ResidualUNet`, covers both presets:
- `seed` is the original project's network, kept as the comparison point;
- `realtime` is built for a laptop CPU: a pixel-unshuffle stem so the UNet works at a
  quarter of the resolution, a PixelShuffle head, and a global residual whose last layer
  starts at zero, so an untrained model is exactly the identity.
"""

from __future__ import annotations

import torch
from torch import nn

STUDENT_PRESETS: dict[str, dict] = {
    # 64/128/256 channels at full/half/quarter resolution, 1×1 output conv, no residual.
    "seed": dict(widths=[64, 128, 256], blocks=[1, 1, 1], unshuffle=1, head_kernel=1,
                 global_residual=False),
    # Works at 1/4 resolution (4×4 pixel blocks as 48 channels), two more levels below.
    # About 2.9 GFLOP per 1280×720 frame; level 1 (stem, head, 48-channel pixel blocks)
    # dominates the cost, so capacity goes to the cheaper levels below it.
    "realtime": dict(widths=[12, 24, 48], blocks=[1, 1, 1], unshuffle=4, head_kernel=3,
                     global_residual=True),
}


def space_to_depth(x, block):
    n, c, h, w = x.shape
    x = x.reshape(n, c, h // block, block, w // block, block)
    return x.permute(0, 3, 5, 1, 2, 4).reshape(n, block * block * c, h // block, w // block)


class _SpaceToDepthOp(torch.autograd.Function):
    """Maps `space_to_depth` onto ONNX's SpaceToDepth op when exporting."""

    @staticmethod
    def forward(ctx, x, block):
        return space_to_depth(x, block)

    @staticmethod
    def symbolic(g, x, block):
        return g.op("SpaceToDepth", x, blocksize_i=block)


class SpaceToDepth(nn.Module):
    """Pixel unshuffle with ONNX's channel order (row in block, column in block, colour).

    Same information as nn.PixelUnshuffle, in the order of onnxruntime's SpaceToDepth
    kernel, so it exports as that one op instead of a 6-D transpose that costs about a
    third of the realtime student's time at 720p on a CPU."""

    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, x):
        if torch.onnx.is_in_onnx_export():
            return _SpaceToDepthOp.apply(x, self.block)
        return space_to_depth(x, self.block)


class ResidualBlock(nn.Module):
    """conv3×3 → ReLU → conv3×3, added to the input."""

    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(self.relu(self.conv1(x)))


class DecoderStage(nn.Module):
    """Up-sample ×2, add the encoder's features of that level, ReLU, residual blocks."""

    def __init__(self, in_channels, out_channels, blocks):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.relu = nn.ReLU(inplace=True)
        self.blocks = nn.Sequential(*[ResidualBlock(out_channels) for _ in range(blocks)])

    def forward(self, x, skip):
        return self.blocks(self.relu(self.up(x) + skip))


class ResidualUNet(nn.Module):
    """Encoder/decoder with a residual block in every stage and additive skips.

    Input and output: N×3×H×W RGB in [0, 1]; H and W must be multiples of `size_multiple`.
    """

    arch = "residual_unet"

    def __init__(self, widths=(24, 32, 48), blocks=(1, 1, 1), unshuffle=4, head_kernel=3,
                 global_residual=True, in_channels=3, preset=None):
        super().__init__()
        if len(widths) != len(blocks) or len(widths) < 1:
            raise ValueError("widths and blocks need one entry per stage")
        self.config = dict(preset=preset, widths=list(widths), blocks=list(blocks),
                           unshuffle=unshuffle, head_kernel=head_kernel,
                           global_residual=global_residual, in_channels=in_channels)
        self.global_residual = global_residual
        stem_channels = in_channels * unshuffle * unshuffle
        self.unshuffle = SpaceToDepth(unshuffle) if unshuffle > 1 else nn.Identity()

        self.encoders = nn.ModuleList()
        for i, (width, count) in enumerate(zip(widths, blocks)):
            previous = stem_channels if i == 0 else widths[i - 1]
            self.encoders.append(nn.Sequential(
                nn.Conv2d(previous, width, 3, stride=1 if i == 0 else 2, padding=1),
                nn.ReLU(inplace=True),
                *[ResidualBlock(width) for _ in range(count)],
            ))
        self.decoders = nn.ModuleList(
            DecoderStage(widths[i + 1], widths[i], blocks[i]) for i in reversed(range(len(widths) - 1))
        )
        self.head = nn.Conv2d(widths[0], stem_channels, head_kernel, padding=head_kernel // 2)
        self.shuffle = nn.PixelShuffle(unshuffle) if unshuffle > 1 else nn.Identity()
        if global_residual:
            # Zero detail at start: the untrained model passes frames through untouched.
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    @property
    def size_multiple(self) -> int:
        return self.config["unshuffle"] * 2 ** (len(self.config["widths"]) - 1)

    @property
    def receptive_radius(self) -> int:
        """Theoretical receptive-field radius in input pixels: how far one output pixel can
        see. Tiles that overlap by this much (and start on `size_multiple`) reassemble
        exactly. Tracks, for each feature map, the input interval [lo, hi] (relative to
        the feature's own top-left input pixel) that one feature reads."""
        widths, blocks = self.config["widths"], self.config["blocks"]
        scale = self.config["unshuffle"]
        lo, hi = 0, scale - 1
        intervals = []
        for i in range(len(widths)):
            if i > 0:
                scale *= 2  # stride-2 3×3 conv: one tap either side on the finer grid
            lo, hi = lo - scale // (2 if i > 0 else 1), hi + scale // (2 if i > 0 else 1)
            lo, hi = lo - 2 * blocks[i] * scale, hi + 2 * blocks[i] * scale
            intervals.append((lo, hi))
        for i in reversed(range(len(widths) - 1)):
            scale //= 2
            lo -= scale  # a 2×2 transposed conv: the odd output reads the coarse pixel left of it
            lo, hi = min(lo, intervals[i][0]), max(hi, intervals[i][1])
            lo, hi = lo - 2 * blocks[i] * scale, hi + 2 * blocks[i] * scale
        pad = self.config["head_kernel"] // 2 * scale
        lo, hi = lo - pad, hi + pad
        return max(-(lo - (scale - 1)), hi)

    def forward(self, image):
        x = self.unshuffle(image)
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
        skips.pop()
        for decoder in self.decoders:
            x = decoder(x, skips.pop())
        out = self.shuffle(self.head(x))
        return image + out if self.global_residual else out


def build_student(preset: str = "realtime", **overrides) -> ResidualUNet:
    if preset not in STUDENT_PRESETS:
        raise ValueError(f"unknown student preset {preset!r}; choose one of "
                         f"{', '.join(STUDENT_PRESETS)}")
    config = {**STUDENT_PRESETS[preset], **overrides}
    return ResidualUNet(preset=preset, **config)


def student_from_config(config: dict) -> ResidualUNet:
    return ResidualUNet(**config)
