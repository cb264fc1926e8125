"""The Restormer teacher: released parameter layout, strict loading, configuration read
back from tensors, the computation of one block, and clear errors for bad files."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from models import (RESTORMER_PRESETS, CheckpointError, Restormer, load_restormer,
                    restormer_config_from_state_dict)
from models.restormer import TransformerBlock

RELEASED_TSV = Path(__file__).parent / "data" / "restormer_state_dict.tsv"


def randomised(model, seed=0):
    """Every parameter random, LayerNorm weights and attention temperatures included, so
    a load that silently skipped one would show in the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            centre = 1.0 if p.ndim == 1 or name.endswith("temperature") else 0.0
            p.copy_(torch.randn(p.shape, generator=generator) * 0.2 + centre)
    return model.eval()


def test_released_configuration_matches_reference_names_and_shapes():
    expected = {}
    for line in RELEASED_TSV.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, shape = line.split("\t")
        expected[name] = tuple(int(s) for s in shape.split("x"))
    model = Restormer(**RESTORMER_PRESETS["released"])
    actual = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert actual == expected
    assert sum(p.numel() for p in model.parameters()) == 26_126_644


def test_released_params_file_loads_strictly_and_reproduces_output(tmp_path):
    source = randomised(Restormer(**RESTORMER_PRESETS["tiny"]))
    path = tmp_path / "motion_deblurring.pth"
    torch.save({"params": source.state_dict()}, path)

    loaded = load_restormer(path)
    assert not loaded.training
    x = torch.rand(2, 3, 40, 56)
    with torch.no_grad():
        # Same weights in separate tensors: oneDNN may pick another kernel and round differently.
        torch.testing.assert_close(loaded(x), source(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("config", [
    RESTORMER_PRESETS["tiny"],
    RESTORMER_PRESETS["small"],
    {**RESTORMER_PRESETS["tiny"], "LayerNorm_type": "BiasFree"},
    {**RESTORMER_PRESETS["tiny"], "bias": True, "ffn_expansion_factor": 3.0},
    {**RESTORMER_PRESETS["tiny"], "dim": 6, "num_blocks": [2, 1, 3, 1], "heads": [1, 2, 3, 6],
     "num_refinement_blocks": 3, "ffn_expansion_factor": 2.0},
    {**RESTORMER_PRESETS["tiny"], "inp_channels": 6, "dual_pixel_task": True},
])
def test_configuration_is_read_back_from_tensors(config, tmp_path):
    source = randomised(Restormer(**config))
    assert restormer_config_from_state_dict(source.state_dict()) == source.config

    path = tmp_path / "bare.pth"
    torch.save(source.state_dict(), path)
    loaded = load_restormer(path)
    x = torch.rand(1, config["inp_channels"], 24, 32)
    with torch.no_grad():
        # Same weights in separate tensors: oneDNN may pick another kernel and round differently.
        torch.testing.assert_close(loaded(x), source(x), rtol=0, atol=1e-6)


def test_released_configuration_is_read_back_from_reference_shapes():
    state_dict = Restormer(**RESTORMER_PRESETS["released"]).to("meta").state_dict()
    assert restormer_config_from_state_dict(state_dict) == RESTORMER_PRESETS["released"]


def reference_block(block, x):
    """One transformer block written out from the paper's equations with einops, the way
    the released code is written, as an independent oracle."""
    def norm(layer, t):
        t3 = rearrange(t, "b c h w -> b (h w) c")
        var = t3.var(-1, keepdim=True, unbiased=False)
        if hasattr(layer.body, "bias"):
            out = (t3 - t3.mean(-1, keepdim=True)) / torch.sqrt(var + 1e-5) * layer.body.weight + layer.body.bias
        else:
            out = t3 / torch.sqrt(var + 1e-5) * layer.body.weight
        return rearrange(out, "b (h w) c -> b c h w", h=t.shape[2])

    attn = block.attn
    q, k, v = attn.qkv_dwconv(attn.qkv(norm(block.norm1, x))).chunk(3, dim=1)
    q, k, v = (rearrange(t, "b (head c) h w -> b head c (h w)", head=attn.num_heads) for t in (q, k, v))
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    a = ((q @ k.transpose(-2, -1)) * attn.temperature).softmax(dim=-1)
    out = rearrange(a @ v, "b head c (h w) -> b (head c) h w", head=attn.num_heads, h=x.shape[2])
    x = x + attn.project_out(out)

    ffn = block.ffn
    x1, x2 = ffn.dwconv(ffn.project_in(norm(block.norm2, x))).chunk(2, dim=1)
    return x + ffn.project_out(F.gelu(x1) * x2)


@pytest.mark.parametrize("norm_type", ["WithBias", "BiasFree"])
def test_transformer_block_computes_the_papers_equations(norm_type):
    block = randomised(TransformerBlock(8, 2, 2.66, False, norm_type))
    x = torch.randn(2, 8, 6, 10) + 0.5  # a non-zero mean makes BiasFree's difference visible
    with torch.no_grad():
        torch.testing.assert_close(block(x), reference_block(block, x), rtol=1e-5, atol=1e-5)


def test_biasfree_norm_does_not_subtract_the_mean():
    block = TransformerBlock(4, 1, 2.66, False, "BiasFree")
    x = torch.full((1, 4, 2, 2), 3.0)  # zero variance: only a kept mean survives
    assert torch.allclose(block.norm1(x), torch.full_like(x, 3.0 / (1e-5) ** 0.5))


def test_sizes_not_multiple_of_eight_are_padded_and_cropped_back():
    model = randomised(Restormer(**RESTORMER_PRESETS["tiny"]))
    with torch.no_grad():
        assert model(torch.rand(1, 3, 37, 51)).shape == (1, 3, 37, 51)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_restormer(tmp_path / "nowhere.pth")


def test_text_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("these are not weights")
    with pytest.raises(CheckpointError, match="is not a PyTorch checkpoint"):
        load_restormer(path)


def test_truncated_file_is_reported(tmp_path):
    path = tmp_path / "motion_deblurring.pth"
    torch.save({"params": Restormer(**RESTORMER_PRESETS["tiny"]).state_dict()}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_restormer(path)


def test_foreign_architecture_names_first_missing_and_unexpected_keys(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"params": {"conv1.weight": torch.zeros(8, 3, 3, 3)}}, path)
    with pytest.raises(CheckpointError, match="first missing key 'patch_embed.proj.weight'.*'conv1.weight'"):
        load_restormer(path)


def test_restormer_with_extra_and_missing_layers_is_refused(tmp_path):
    state_dict = Restormer(**RESTORMER_PRESETS["tiny"]).state_dict()
    state_dict["extra.weight"] = torch.zeros(1)
    del state_dict["output.weight"]
    path = tmp_path / "odd.pth"
    torch.save(state_dict, path)
    with pytest.raises(CheckpointError):
        load_restormer(path)


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"params": {"x": torch.zeros(1)}, "hook": Path("/")}, path)
    with pytest.raises(CheckpointError, match="other than tensors"):
        load_restormer(path)
