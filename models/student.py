"""The Residual UNet student: the network SharpCam runs on every frame.

One class, `ResidualUNet`, covers every preset. The encoder/decoder with a residual
block in each stage and skip connections is the original project's; what changes
between presets is the resolution it works at, how many blocks each stage has, and what
its head predicts:
- `seed` is the original network (64/128/256 channels, RGB out), the comparison point;
- `pixels` works at a quarter of the resolution behind a pixel-unshuffle stem and
  predicts the residual pixels through a PixelShuffle head (the first real-time design,
  kept because the sweep in MODEL_CARD.md shows why it was replaced: it cannot learn);
- `realtime` (the default) is a learned, content-aware unsharp mask: a
  quarter-resolution UNet predicts, per pixel, a gain for each of two fixed
  band-pass layers of the full-resolution frame's luma, and the output is
  ``frame + Σₖ gainₖ · bandₖ``. The network decides where to sharpen and by how much
  (edges up, flat noisy areas down); the detail itself comes from the full-resolution
  frame, so the cheap low-resolution network never has to reproduce it. The same idea
  as HDRNet's and basis-filter networks' low-resolution predictors. Its coarsest
  features also get the frame's average (`FrameContext`, as HDRNet's global path and
  blind super-resolution's degradation estimates do): a camera's softness and
  noise are the same all over a frame, and the whole frame estimates them far more
  steadily than a local window; with them comes one number that says whether the frame
  was JPEG-compressed (`block_edge_contrast`), which blur and compression look alike
  without. Such a model runs on whole frames, never on tiles.
Every real-time head starts at zero, so an untrained model is exactly the identity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

STUDENT_PRESETS: dict[str, dict] = {
    # 64/128/256 channels at full/half/quarter resolution, 1×1 output conv, no residual.
    "seed": dict(widths=[64, 128, 256], blocks=[1, 1, 1], unshuffle=1, head_kernel=1,
                 global_residual=False, bands=[]),
    # 1/4 resolution (4×4 pixel blocks as 48 channels), residual pixels out: ~2.9 GFLOP/720p.
    "pixels": dict(widths=[12, 24, 48], blocks=[1, 1, 1], unshuffle=4, head_kernel=3,
                   global_residual=True, bands=[]),
    # A 1/4-resolution UNet on the luma and its band energies, gains for two
    # full-resolution luma bands out (box filters 3 and 9, cascaded: σ ≈ 0.8 and 2.7), with
    # the frame's average features, and its JPEG block-edge contrast, added at its coarsest
    # level. Built for onnxruntime on a laptop CPU, where the full-resolution band maths and
    # the finer levels cost the most: a 1×1 stem, one residual block, at 1/16 only, and a
    # 1×1 head; two bands, not three. 0.55 GFLOP/720p, 0.70× the time of the design before
    # it at the same held-out mix (docs/design_rounds.md, "Fourth round"); the block-edge contrast
    # costs 1–5 % more time and brings JPEG and noise up ("Fifth round").
    "realtime": dict(widths=[12, 24, 48], blocks=[0, 0, 1], unshuffle=4, head_kernel=1,
                     global_residual=True, bands=[3, 9], luma_input=True, band_energy=True,
                     frame_context=True, stem_kernel=1, block_edges=True),
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
    third of a quarter-resolution student's time at 720p on a CPU."""

    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, x):
        if torch.onnx.is_in_onnx_export():
            return _SpaceToDepthOp.apply(x, self.block)
        return space_to_depth(x, self.block)


# ITU-R BT.601 luma weights: the bands and their gains act on brightness only, so
# sharpening never shifts colours and chroma noise is never amplified.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


class LumaBands(nn.Module):
    """Fixed band-pass layers of the frame's luma: Y − B₁Y, B₁Y − B₂B₁Y, …

    Each Bₖ is a box filter of the given size (stride 1, borders averaged over the pixels
    inside the frame); cascaded, they approach Gaussians (3, 9 give σ ≈ 0.8, 2.7).
    Box filters rather than Gaussian convolutions because onnxruntime's pooling kernels
    run them at full resolution for about a tenth of the cost of depthwise convolutions,
    and the full-resolution part is what bounds a real-time student's speed.
    The bands sum to Y − B_K⋯B₁Y exactly."""

    def __init__(self, box_sizes):
        super().__init__()
        if not box_sizes or any(k < 3 or k % 2 == 0 for k in box_sizes):
            raise ValueError(f"band box sizes must be odd and at least 3, got {list(box_sizes)}")
        self.box_sizes = list(box_sizes)

    @property
    def radius(self) -> int:
        return sum(k // 2 for k in self.box_sizes)

    def forward(self, luma):
        """A list of K bands, each N×1×H×W."""
        levels = [luma]
        for k in self.box_sizes:
            levels.append(F.avg_pool2d(levels[-1], k, stride=1, padding=k // 2, count_include_pad=False))
        return [fine - coarse for fine, coarse in zip(levels[:-1], levels[1:])]


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


def block_edge_contrast(luma, eps=1e-3):
    """How much more the luma steps across the 8×8 blocks' horizontal edges than across
    their middles, per frame: log(mean |row 8 − row 7|, |row 16 − row 15|, … /
    mean |row 4 − row 3|, |row 12 − row 11|, …). N×1×1×1.

    About 0 for any natural frame, sharp, blurred, noisy or rescaled; 0.1–0.8 for a frame
    that went through JPEG at quality 75 or lower, whose 8×8 blocks are quantised apart.
    Compression takes fine detail away much as blur does, but sharpening it back only
    amplifies the quantisation error, so a student needs this to tell the two apart.
    The grid is where a decoded camera frame has it, from row 0; `eps` keeps a frame
    with no steps at all (a flat one) at 0. Whole rows, half of the frame's, read once:
    one direction is enough, since JPEG's blocks have both edges, and a row is
    contiguous where a column is not."""
    edge = (luma[..., 8::8, :] - luma[..., 7:-1:8, :]).abs().mean(dim=(2, 3), keepdim=True)
    mid = (luma[..., 4::8, :] - luma[..., 3:-1:8, :]).abs().mean(dim=(2, 3), keepdim=True)
    return torch.log((edge + eps) / (mid + eps))


def soft_floor(x, sharpness=8.0):
    """Each channel's soft minimum over the frame, −log(mean(exp(−k·x)))/k with k the
    `sharpness`: near the lowest values where a share of the cells sits there. Like
    `soft_peak`, it keeps its scale from a training crop's few hundred cells to a frame's
    tens of thousands. N×C×1×1."""
    return -soft_peak(-sharpness * x) / sharpness


def soft_peak(x):
    """Each channel's soft maximum over the frame, log(mean(exp(x))): near the largest
    values where a few stand out, near the mean where none do. Unlike a hard maximum it
    does not grow with the number of cells, so a 96×96 training crop and a 720p frame
    give it the same scale. N×C×1×1."""
    top = x.amax(dim=(2, 3), keepdim=True).detach()  # for exp's range only: the value is exact
    return top + torch.log(torch.exp(x - top).mean(dim=(2, 3), keepdim=True))


class FrameContext(nn.Module):
    """Features averaged over the whole frame, turned into a per-channel offset added
    everywhere: what the frame as a whole says about its camera.

    A webcam's softness and noise are the same all over a frame, but a window of a few
    hundred pixels cannot always tell a mildly soft edge from a naturally soft one; the
    frame's average is a far steadier estimate. With `peaks`, each feature's soft maximum
    over the frame (`soft_peak`) joins the average: the crispest parts of a frame bound
    how soft its camera can be, where the average is led by whatever is out of focus (a
    blurred background, a bokeh shot) or flat. `measures` more per-frame numbers (the
    block-edge contrast, the noise floor) can join too. The second convolution starts at
    zero, so the branch starts as no offset at all."""

    def __init__(self, channels, measures=0, peaks=False):
        super().__init__()
        self.peaks = peaks
        self.conv1 = nn.Conv2d(channels * (2 if peaks else 1) + measures, channels, 1)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 1)

    def forward(self, x, measures=None):
        summary = [x.mean(dim=(2, 3), keepdim=True)]
        if self.peaks:
            summary.append(soft_peak(x))
        if measures is not None:
            summary.append(measures)
        summary = summary[0] if len(summary) == 1 else torch.cat(summary, dim=1)
        return x + self.conv2(self.relu(self.conv1(summary)))


class ResidualUNet(nn.Module):
    """Encoder/decoder with `blocks[i]` residual blocks in stage i and additive skips.

    Input and output: N×3×H×W RGB in [0, 1]; H and W must be multiples of `size_multiple`.
    With `bands` (box sizes of `LumaBands`) the head predicts one gain per band at the
    UNet's resolution, up-sampled bilinearly to the frame; the gain-weighted bands are
    added to R, G and B alike. ``stem_kernel=1`` makes the first convolution a projection
    of each cell on its own (3×3 reads its neighbours too), a tenth of the compute where the
    unshuffled luma and band energies give it many input channels.
    """

    arch = "residual_unet"

    def __init__(self, widths, blocks, unshuffle, head_kernel, global_residual, bands=(),
                 luma_input=False, band_energy=False, frame_context=False, stem_kernel=3,
                 block_edges=False, context_peaks=False, noise_floor=False, in_channels=3, preset=None):
        super().__init__()
        if len(widths) != len(blocks) or len(widths) < 1:
            raise ValueError("widths and blocks need one entry per stage")
        if bands and not global_residual:
            raise ValueError("band gains sharpen the input: they need global_residual=True")
        self.config = dict(preset=preset, widths=list(widths), blocks=list(blocks),
                           unshuffle=unshuffle, head_kernel=head_kernel,
                           global_residual=global_residual, bands=list(bands),
                           luma_input=luma_input, band_energy=band_energy,
                           frame_context=frame_context, stem_kernel=stem_kernel,
                           block_edges=block_edges, context_peaks=context_peaks, noise_floor=noise_floor,
                           in_channels=in_channels)
        self.global_residual = global_residual
        if (bands or luma_input) and in_channels != 3:
            raise ValueError("luma bands and luma input need RGB images (in_channels=3)")
        if stem_kernel not in (1, 3):
            raise ValueError(f"stem_kernel must be 1 or 3, got {stem_kernel}")
        if (luma_input or band_energy) and not bands:
            raise ValueError("luma_input and band_energy need bands: they are features of the bands")
        if block_edges and not (bands and frame_context):
            raise ValueError("block_edges is a per-frame measure of the luma: it needs bands and frame_context")
        if noise_floor and not (band_energy and frame_context):
            raise ValueError("noise_floor is a per-frame measure of the band energies: it needs band_energy "
                             "and frame_context")
        if context_peaks and not frame_context:
            raise ValueError("context_peaks is part of the frame context: it needs frame_context")
        self.block_edges = block_edges
        self.noise_floor = noise_floor
        self.luma_input = luma_input
        stem_channels = (1 if luma_input else in_channels) * unshuffle * unshuffle
        self.band_energy = band_energy
        self.register_buffer("luma_weights", torch.tensor([LUMA_WEIGHTS]), persistent=False)
        self.unshuffle = SpaceToDepth(unshuffle) if unshuffle > 1 else nn.Identity()

        self.encoders = nn.ModuleList()
        for i, (width, count) in enumerate(zip(widths, blocks)):
            previous = stem_channels + (len(bands) if band_energy else 0) if i == 0 else widths[i - 1]
            kernel = stem_kernel if i == 0 else 3
            self.encoders.append(nn.Sequential(
                nn.Conv2d(previous, width, kernel, stride=1 if i == 0 else 2, padding=kernel // 2),
                nn.ReLU(inplace=True),
                *[ResidualBlock(width) for _ in range(count)],
            ))
        self.context = (FrameContext(widths[-1], measures=int(block_edges) + int(noise_floor), peaks=context_peaks)
                        if frame_context else None)
        self.decoders = nn.ModuleList(
            DecoderStage(widths[i + 1], widths[i], blocks[i]) for i in reversed(range(len(widths) - 1))
        )
        if bands:
            self.bands = LumaBands(bands)
            head_channels = len(bands)
            self.shuffle = None
        else:
            self.bands = None
            head_channels = stem_channels
            self.shuffle = nn.PixelShuffle(unshuffle) if unshuffle > 1 else nn.Identity()
        self.head = nn.Conv2d(widths[0], head_channels, head_kernel, padding=head_kernel // 2)
        self.initialise()
        if global_residual:
            # Zero detail at start: the untrained model passes frames through untouched.
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def initialise(self):
        """He initialisation for the ReLU convolutions, each residual branch starting at zero.

        PyTorch's default conv initialisation shrinks the signal at every ReLU layer: the
        features reaching the head start about ten times weaker than with He initialisation
        (0.12 against 1.3 on a random image). Trained from there, the head learned its bias
        first, the body's features faded further (to ~1e-4 after 20,000 steps) and the model
        stayed one fixed filter, whatever the content. He initialisation keeps the signal's
        scale, and zeroed residual branches make every block start as the identity, so
        depth cannot blow it up either."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu",
                                        mode="fan_out" if isinstance(module, nn.ConvTranspose2d) else "fan_in")
                nn.init.zeros_(module.bias)
            if isinstance(module, (ResidualBlock, FrameContext)):
                nn.init.zeros_(module.conv2.weight)

    @property
    def size_multiple(self) -> int:
        return self.config["unshuffle"] * 2 ** (len(self.config["widths"]) - 1)

    @property
    def reads_whole_frame(self) -> bool:
        """Whether every output pixel also depends on the whole frame (`FrameContext`):
        such a model runs on whole frames only, since tiles would each see a different
        average."""
        return self.context is not None

    @property
    def receptive_radius(self) -> int:
        """Theoretical receptive-field radius in input pixels: how far one output pixel can
        see through its local path (the frame context, when there is one, reads
        everything; see `reads_whole_frame`). Tiles that overlap by this much (and start on
        `size_multiple`) reassemble exactly. Tracks, for each feature map, the input
        interval [lo, hi] (relative to the feature's own top-left input pixel) that one
        feature reads."""
        widths, blocks = self.config["widths"], self.config["blocks"]
        scale = self.config["unshuffle"]
        lo, hi = 0, scale - 1
        if self.band_energy:  # a cell's band energies read the bands' own support around it
            lo, hi = lo - self.bands.radius, hi + self.bands.radius
        intervals = []
        for i in range(len(widths)):
            if i > 0:
                scale *= 2  # stride-2 3×3 conv: one tap either side on the finer grid
            # The first conv reads stem_kernel // 2 cells either side of its own.
            reach = scale // 2 if i > 0 else self.config["stem_kernel"] // 2 * scale
            lo, hi = lo - reach, hi + reach
            lo, hi = lo - 2 * blocks[i] * scale, hi + 2 * blocks[i] * scale
            intervals.append((lo, hi))
        for i in reversed(range(len(widths) - 1)):
            scale //= 2
            lo -= scale  # a 2×2 transposed conv: the odd output reads the coarse pixel left of it
            lo, hi = min(lo, intervals[i][0]), max(hi, intervals[i][1])
            lo, hi = lo - 2 * blocks[i] * scale, hi + 2 * blocks[i] * scale
        pad = self.config["head_kernel"] // 2 * scale
        lo, hi = lo - pad, hi + pad
        if self.bands is None:
            return max(-(lo - (scale - 1)), hi)
        # Bilinear up-sampling reads the gain cells either side of a pixel's own cell.
        lo, hi = lo - scale, hi + scale
        return max(-(lo - (scale - 1)), hi, self.bands.radius)

    def luma(self, image):
        # A 1×3 matrix product over the flattened planes: onnxruntime runs it as one
        # memory-bound pass, where a 1×1 conv pads its output to 8 channels and reorders
        # it, and a multiply-then-sum makes two full-resolution passes.
        n, _, h, w = image.shape
        return torch.matmul(self.luma_weights, image.reshape(n, 3, h * w)).reshape(n, 1, h, w)

    def stem(self, pixels, energy):
        """The first convolution, on the unshuffled pixels beside the band energies.

        A 1×1 convolution after a pixel unshuffle is a u×u convolution of stride u on the
        frame itself, and a convolution of a concatenation is the sum of convolutions of
        its parts: written that way, the full-resolution unshuffle and the concatenation
        never happen (onnxruntime, 720p, one thread: 2.5 ms instead of 4.0). The weights
        stay those of the 1×1 convolution, so checkpoints are unchanged."""
        conv = self.encoders[0][0]
        block = self.config["unshuffle"]
        if self.config["stem_kernel"] != 1 or block == 1:
            x = self.unshuffle(pixels)
            return conv(x if energy is None else torch.cat([x, energy], dim=1))
        width, colours = conv.out_channels, pixels.shape[1]
        cells = colours * block * block
        # SpaceToDepth's channel order is (row in block, column in block, colour).
        per_pixel = conv.weight[:, :cells].reshape(width, block, block, colours).permute(0, 3, 1, 2)
        x = F.conv2d(pixels, per_pixel, conv.bias, stride=block)
        if energy is not None:
            x = x + F.conv2d(energy, conv.weight[:, cells:])
        return x

    def cell_energies(self, bands):
        """How much detail each band holds around every cell of the UNet's first level, on
        a log scale: what tells blur (little fine detail) from noise (much of it,
        everywhere). N×K×H/u×W/u."""
        block = self.config["unshuffle"]
        energy = torch.cat([F.avg_pool2d(band.abs(), block) for band in bands], dim=1)
        # Centred and scaled to about ±1 like the pixels beside them (log 1e-3 ≈ −6.9,
        # a busy band's log energy ≈ −2).
        return (torch.log(energy + 1e-3) + 4.5) / 2.5

    def forward(self, image):
        luma = self.luma(image) if self.bands is not None else None
        bands = self.bands(luma) if self.bands is not None else None
        pixels = luma if self.luma_input else image
        energy = self.cell_energies(bands) if self.band_energy else None
        x = self.stem(pixels, energy)
        skips = []
        for i, encoder in enumerate(self.encoders):
            x = encoder(x) if i else encoder[1:](x)  # the first stage's conv is the stem
            skips.append(x)
        skips.pop()
        if self.context is not None:
            measures = []
            if self.block_edges:
                measures.append(block_edge_contrast(luma))
            if self.noise_floor:
                # What the frame's flattest cells hold in the fine band: noise and rounding,
                # however soft the frame is. The average over cells is led by edges and
                # texture; the floor says whether a flat face can be sharpened or is noise.
                measures.append(soft_floor(energy[:, :1]))
            x = self.context(x, torch.cat(measures, dim=1) if measures else None)
        for decoder in self.decoders:
            x = decoder(x, skips.pop())
        x = self.head(x)
        if self.bands is None:
            out = self.shuffle(x)
            return image + out if self.global_residual else out
        detail = None
        for gain, band in zip(x.split(1, dim=1), bands):
            # Up-sampled one band at a time: full-resolution copies are what cost here.
            term = F.interpolate(gain, scale_factor=self.config["unshuffle"], mode="bilinear",
                                 align_corners=False) * band
            detail = term if detail is None else detail + term
        return image + detail


def build_student(preset: str = "realtime", **overrides) -> ResidualUNet:
    if preset not in STUDENT_PRESETS:
        raise ValueError(f"unknown student preset {preset!r}; choose one of "
                         f"{', '.join(STUDENT_PRESETS)}")
    config = {**STUDENT_PRESETS[preset], **overrides}
    return ResidualUNet(preset=preset, **config)
