"""Restormer (Zamir et al., CVPR 2022): the teacher network, checkpoint-compatible with the
released weights.

Parameter names mirror the official implementation so that `motion_deblurring.pth` and the
other released files load with `strict=True`. `restormer_config_from_state_dict` reads the
configuration back from the tensors, so any released task or our own smaller teachers load
with no flags (see `load_restormer` in models/checkpoint.py).
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn

RESTORMER_PRESETS: dict[str, dict] = {
    # The released configuration (motion deblurring, deraining, single-image defocus).
    "released": dict(
        inp_channels=3, out_channels=3, dim=48, num_blocks=[4, 6, 6, 8],
        num_refinement_blocks=4, heads=[1, 2, 4, 8], ffn_expansion_factor=2.66,
        bias=False, LayerNorm_type="WithBias", dual_pixel_task=False,
    ),
    # A teacher one laptop can train: same code path, ~1/8 of the compute.
    "small": dict(
        inp_channels=3, out_channels=3, dim=24, num_blocks=[2, 3, 3, 4],
        num_refinement_blocks=2, heads=[1, 2, 4, 8], ffn_expansion_factor=2.66,
        bias=False, LayerNorm_type="WithBias", dual_pixel_task=False,
    ),
    # For tests and smoke runs: 16 k parameters, every kind of layer still present.
    "tiny": dict(
        inp_channels=3, out_channels=3, dim=2, num_blocks=[1, 1, 1, 1],
        num_refinement_blocks=1, heads=[1, 2, 2, 2], ffn_expansion_factor=2.66,
        bias=False, LayerNorm_type="WithBias", dual_pixel_task=False,
    ),
}


class BiasFree_LayerNorm(nn.Module):
    def __init__(self, normalized_shape):
        super().__init__()
        if isinstance(normalized_shape, numbers.Integral):
            normalized_shape = (normalized_shape,)
        self.weight = nn.Parameter(torch.ones(normalized_shape))

    def forward(self, x):
        # The mean enters the variance but is deliberately not subtracted from x.
        sigma = x.var(-1, keepdim=True, unbiased=False)
        return x / torch.sqrt(sigma + 1e-5) * self.weight


class WithBias_LayerNorm(nn.Module):
    def __init__(self, normalized_shape):
        super().__init__()
        if isinstance(normalized_shape, numbers.Integral):
            normalized_shape = (normalized_shape,)
        self.weight = nn.Parameter(torch.ones(normalized_shape))
        self.bias = nn.Parameter(torch.zeros(normalized_shape))

    def forward(self, x):
        mu = x.mean(-1, keepdim=True)
        sigma = x.var(-1, keepdim=True, unbiased=False)
        return (x - mu) / torch.sqrt(sigma + 1e-5) * self.weight + self.bias


class LayerNorm(nn.Module):
    """Per-pixel LayerNorm over channels of an N×C×H×W map."""

    def __init__(self, dim, LayerNorm_type):
        super().__init__()
        if LayerNorm_type == "BiasFree":
            self.body = BiasFree_LayerNorm(dim)
        else:
            self.body = WithBias_LayerNorm(dim)

    def forward(self, x):
        return self.body(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class FeedForward(nn.Module):
    """Gated-Dconv feed-forward network (GDFN)."""

    def __init__(self, dim, ffn_expansion_factor, bias):
        super().__init__()
        hidden_features = int(dim * ffn_expansion_factor)
        self.project_in = nn.Conv2d(dim, hidden_features * 2, kernel_size=1, bias=bias)
        self.dwconv = nn.Conv2d(hidden_features * 2, hidden_features * 2, kernel_size=3,
                                stride=1, padding=1, groups=hidden_features * 2, bias=bias)
        self.project_out = nn.Conv2d(hidden_features, dim, kernel_size=1, bias=bias)

    def forward(self, x):
        x1, x2 = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(x1) * x2)


class Attention(nn.Module):
    """Multi-Dconv head transposed attention (MDTA): attention across channels, not pixels,
    so its cost grows linearly with the image size."""

    def __init__(self, dim, num_heads, bias):
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, kernel_size=1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, kernel_size=3, stride=1, padding=1,
                                    groups=dim * 3, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1)
        q = q.reshape(b, self.num_heads, c // self.num_heads, h * w)
        k = k.reshape(b, self.num_heads, c // self.num_heads, h * w)
        v = v.reshape(b, self.num_heads, c // self.num_heads, h * w)
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        attn = (q @ k.transpose(-2, -1)) * self.temperature
        out = attn.softmax(dim=-1) @ v
        return self.project_out(out.reshape(b, c, h, w))


class TransformerBlock(nn.Module):
    def __init__(self, dim, num_heads, ffn_expansion_factor, bias, LayerNorm_type):
        super().__init__()
        self.norm1 = LayerNorm(dim, LayerNorm_type)
        self.attn = Attention(dim, num_heads, bias)
        self.norm2 = LayerNorm(dim, LayerNorm_type)
        self.ffn = FeedForward(dim, ffn_expansion_factor, bias)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class OverlapPatchEmbed(nn.Module):
    def __init__(self, in_c=3, embed_dim=48, bias=False):
        super().__init__()
        self.proj = nn.Conv2d(in_c, embed_dim, kernel_size=3, stride=1, padding=1, bias=bias)

    def forward(self, x):
        return self.proj(x)


class Downsample(nn.Module):
    def __init__(self, n_feat):
        super().__init__()
        # The released code hard-codes bias=False here, whatever the model's `bias`.
        self.body = nn.Sequential(
            nn.Conv2d(n_feat, n_feat // 2, kernel_size=3, stride=1, padding=1, bias=False),
            nn.PixelUnshuffle(2),
        )

    def forward(self, x):
        return self.body(x)


class Upsample(nn.Module):
    def __init__(self, n_feat):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(n_feat, n_feat * 2, kernel_size=3, stride=1, padding=1, bias=False),
            nn.PixelShuffle(2),
        )

    def forward(self, x):
        return self.body(x)


def _level(dim, heads, blocks, ffn_expansion_factor, bias, LayerNorm_type):
    return nn.Sequential(*[
        TransformerBlock(dim, heads, ffn_expansion_factor, bias, LayerNorm_type)
        for _ in range(blocks)
    ])


class Restormer(nn.Module):
    """Four-level encoder–decoder of transformer blocks with a global residual.

    Input and output: N×C×H×W, RGB in [0, 1]. H and W need not be multiples of 8: the
    input is reflect-padded and the output cropped back.
    """

    arch = "restormer"

    def __init__(self, inp_channels=3, out_channels=3, dim=48, num_blocks=(4, 6, 6, 8),
                 num_refinement_blocks=4, heads=(1, 2, 4, 8), ffn_expansion_factor=2.66,
                 bias=False, LayerNorm_type="WithBias", dual_pixel_task=False):
        super().__init__()
        self.config = dict(
            inp_channels=inp_channels, out_channels=out_channels, dim=dim,
            num_blocks=list(num_blocks), num_refinement_blocks=num_refinement_blocks,
            heads=list(heads), ffn_expansion_factor=ffn_expansion_factor, bias=bias,
            LayerNorm_type=LayerNorm_type, dual_pixel_task=dual_pixel_task,
        )
        level = dict(ffn_expansion_factor=ffn_expansion_factor, bias=bias,
                     LayerNorm_type=LayerNorm_type)
        self.patch_embed = OverlapPatchEmbed(inp_channels, dim, bias)
        self.encoder_level1 = _level(dim, heads[0], num_blocks[0], **level)
        self.down1_2 = Downsample(dim)
        self.encoder_level2 = _level(dim * 2, heads[1], num_blocks[1], **level)
        self.down2_3 = Downsample(dim * 2)
        self.encoder_level3 = _level(dim * 4, heads[2], num_blocks[2], **level)
        self.down3_4 = Downsample(dim * 4)
        self.latent = _level(dim * 8, heads[3], num_blocks[3], **level)

        self.up4_3 = Upsample(dim * 8)
        self.reduce_chan_level3 = nn.Conv2d(dim * 8, dim * 4, kernel_size=1, bias=bias)
        self.decoder_level3 = _level(dim * 4, heads[2], num_blocks[2], **level)
        self.up3_2 = Upsample(dim * 4)
        self.reduce_chan_level2 = nn.Conv2d(dim * 4, dim * 2, kernel_size=1, bias=bias)
        self.decoder_level2 = _level(dim * 2, heads[1], num_blocks[1], **level)
        # Level 1 keeps the concatenated 2·dim channels: no reduction.
        self.up2_1 = Upsample(dim * 2)
        self.decoder_level1 = _level(dim * 2, heads[0], num_blocks[0], **level)
        self.refinement = _level(dim * 2, heads[0], num_refinement_blocks, **level)

        self.dual_pixel_task = dual_pixel_task
        if dual_pixel_task:
            self.skip_conv = nn.Conv2d(dim, dim * 2, kernel_size=1, bias=bias)
        self.output = nn.Conv2d(dim * 2, out_channels, kernel_size=3, stride=1, padding=1,
                                bias=bias)

    def forward(self, inp_img):
        h, w = inp_img.shape[-2:]
        pad_h, pad_w = (-h) % 8, (-w) % 8
        if pad_h or pad_w:
            inp_img = F.pad(inp_img, (0, pad_w, 0, pad_h), mode="reflect")

        inp_enc_level1 = self.patch_embed(inp_img)
        out_enc_level1 = self.encoder_level1(inp_enc_level1)
        out_enc_level2 = self.encoder_level2(self.down1_2(out_enc_level1))
        out_enc_level3 = self.encoder_level3(self.down2_3(out_enc_level2))
        latent = self.latent(self.down3_4(out_enc_level3))

        inp_dec_level3 = torch.cat([self.up4_3(latent), out_enc_level3], 1)
        out_dec_level3 = self.decoder_level3(self.reduce_chan_level3(inp_dec_level3))
        inp_dec_level2 = torch.cat([self.up3_2(out_dec_level3), out_enc_level2], 1)
        out_dec_level2 = self.decoder_level2(self.reduce_chan_level2(inp_dec_level2))
        inp_dec_level1 = torch.cat([self.up2_1(out_dec_level2), out_enc_level1], 1)
        out_dec_level1 = self.refinement(self.decoder_level1(inp_dec_level1))

        if self.dual_pixel_task:
            out = self.output(out_dec_level1 + self.skip_conv(inp_enc_level1))
        else:
            out = self.output(out_dec_level1) + inp_img
        return out[..., :h, :w]


def _count_blocks(state_dict, prefix):
    indices = {int(k[len(prefix):].split(".", 1)[0]) for k in state_dict if k.startswith(prefix)}
    return max(indices) + 1 if indices else 0


def _expansion_factor(widths_and_hidden):
    """The shortest decimal f with int(width · f) == hidden for every (width, hidden) pair,
    which is how the released code derived the hidden widths from 2.66."""
    if all(int(width * 2.66) == hidden for width, hidden in widths_and_hidden):
        return 2.66  # the released value; small widths would also fit other decimals
    low = max(hidden / width for width, hidden in widths_and_hidden)
    high = min((hidden + 1) / width for width, hidden in widths_and_hidden)
    for decimals in range(0, 7):
        step = 10.0 ** -decimals
        candidate = round(math.ceil(low / step - 1e-9) * step, decimals)
        while candidate < high:
            if all(int(width * candidate) == hidden for width, hidden in widths_and_hidden):
                return candidate
            candidate = round(candidate + step, decimals)
    raise ValueError("no FFN expansion factor reproduces the hidden widths "
                     f"{widths_and_hidden}")


def restormer_config_from_state_dict(state_dict) -> dict:
    """Read a Restormer configuration back from its parameter shapes and names."""
    embed = state_dict["patch_embed.proj.weight"]
    dim, inp_channels = embed.shape[0], embed.shape[1]
    levels = ["encoder_level1", "encoder_level2", "encoder_level3", "latent"]
    num_blocks = [_count_blocks(state_dict, f"{name}.") for name in levels]
    heads = [state_dict[f"{name}.0.attn.temperature"].shape[0] for name in levels]
    widths_and_hidden = []
    for name in levels + ["decoder_level1", "decoder_level2", "decoder_level3", "refinement"]:
        for i in range(_count_blocks(state_dict, f"{name}.")):
            key = f"{name}.{i}.ffn.project_out.weight"
            widths_and_hidden.append((state_dict[key].shape[0], state_dict[key].shape[1]))
    return dict(
        inp_channels=int(inp_channels),
        out_channels=int(state_dict["output.weight"].shape[0]),
        dim=int(dim),
        num_blocks=num_blocks,
        num_refinement_blocks=_count_blocks(state_dict, "refinement."),
        heads=[int(h) for h in heads],
        ffn_expansion_factor=_expansion_factor(widths_and_hidden),
        bias="patch_embed.proj.bias" in state_dict,
        LayerNorm_type=("WithBias" if "encoder_level1.0.norm1.body.bias" in state_dict
                        else "BiasFree"),
        dual_pixel_task="skip_conv.weight" in state_dict,
    )
