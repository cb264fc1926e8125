"""The Residual UNet student, its compute budget, and checkpoint files."""

import os

import numpy as np
import pytest
import torch
from torch import nn

from models import (STUDENT_PRESETS, CheckpointError, build_student, load_checkpoint,
                    load_student, save_checkpoint)
from models.__main__ import gflop
from models.student import SpaceToDepth, block_edge_contrast, soft_floor, soft_peak
from training import degrade


def randomised(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    return model.eval()


def test_seed_is_the_original_network_to_the_parameter():
    model = build_student("seed")
    assert sum(p.numel() for p in model.parameters()) == 2_453_251
    assert not model.global_residual


@pytest.mark.parametrize("preset", list(STUDENT_PRESETS))
@pytest.mark.parametrize("size", [(32, 32), (64, 96), (96, 32), (160, 224)])
def test_presets_keep_the_shape_of_multiples_of_32(preset, size):
    model = randomised(build_student(preset))
    with torch.no_grad():
        assert model(torch.rand(2, 3, *size)).shape == (2, 3, *size)


REALTIME_PRESETS = [name for name, config in STUDENT_PRESETS.items() if config["global_residual"]]


@pytest.mark.parametrize("preset", REALTIME_PRESETS)
def test_untrained_realtime_students_are_the_identity(preset):
    model = build_student(preset).eval()
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(model(x), x)


@pytest.mark.parametrize("preset", REALTIME_PRESETS)
def test_realtime_students_fit_the_cpu_budget_at_720p(preset):
    assert gflop(build_student(preset), 720, 1280) <= 3.0


def test_band_gains_add_a_luma_unsharp_mask_to_every_colour():
    """A constant gain g on the finest band is x + g·(Y − box3(Y)) on R, G and B alike."""
    model = build_student("realtime").eval()
    with torch.no_grad():
        model.head.bias.zero_()
        model.head.bias[0] = 0.7
    x = torch.rand(1, 3, 32, 64)
    y = 0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:]
    box = torch.nn.functional.avg_pool2d(y, 3, stride=1, padding=1, count_include_pad=False)
    with torch.no_grad():
        torch.testing.assert_close(model(x), x + 0.7 * (y - box), rtol=0, atol=1e-6)


def test_luma_bands_sum_to_the_fine_minus_the_coarsest_level():
    from models.student import LumaBands
    bands = LumaBands([3, 5, 9])
    y = torch.rand(1, 1, 40, 48)
    coarse = y
    for k in (3, 5, 9):
        coarse = torch.nn.functional.avg_pool2d(coarse, k, stride=1, padding=k // 2, count_include_pad=False)
    torch.testing.assert_close(sum(bands(y)), y - coarse, rtol=0, atol=1e-6)
    assert bands.radius == 1 + 2 + 4
    with pytest.raises(ValueError, match="odd"):
        LumaBands([3, 4])


def test_a_stem_kernel_other_than_1_or_3_is_refused():
    assert build_student("realtime", stem_kernel=1).encoders[0][0].kernel_size == (1, 1)
    with pytest.raises(ValueError, match="stem_kernel must be 1 or 3"):
        build_student("realtime", stem_kernel=5)


def test_overrides_change_the_shape_and_unknown_presets_are_named():
    model = build_student("realtime", widths=[8, 16], blocks=[2, 1])
    assert model.config["widths"] == [8, 16] and model.config["preset"] == "realtime"
    assert len(model.encoders) == 2 and len(model.encoders[0]) == 4  # conv, relu, 2 blocks
    with pytest.raises(ValueError, match="unknown student preset 'huge'"):
        build_student("huge")


def test_space_to_depth_is_pixel_unshuffle_in_onnx_channel_order():
    x = torch.rand(2, 3, 8, 12)
    ours = SpaceToDepth(4)(x)
    torchs = nn.PixelUnshuffle(4)(x)  # channels ordered (colour, row, column)
    reordered = torchs.reshape(2, 3, 4, 4, 2, 3).permute(0, 2, 3, 1, 4, 5).reshape(2, 48, 2, 3)
    assert torch.equal(ours, reordered)


@pytest.mark.parametrize("config", [dict(), dict(band_energy=False),
                                    dict(luma_input=False, band_energy=False)])
def test_a_1x1_stem_is_the_strided_convolution_of_the_unshuffled_frame(config):
    """The stem never unshuffles nor concatenates: it must equal the 1×1 convolution of
    the unshuffled pixels beside the band energies, weight for weight."""
    model = randomised(build_student("realtime", **config))
    conv, block = model.encoders[0][0], model.config["unshuffle"]
    assert conv.kernel_size == (1, 1)
    pixels = torch.rand(2, 1 if model.luma_input else 3, 32, 48)
    energy = torch.rand(2, 2, 8, 12) if model.band_energy else None
    unshuffled = SpaceToDepth(block)(pixels)
    expected = conv(unshuffled if energy is None else torch.cat([unshuffled, energy], dim=1))
    with torch.no_grad():
        assert torch.allclose(model.stem(pixels, energy), expected, atol=1e-5)


# Every preset, and the other stem and resolution the sweep measured (a 1×1 stem conv at 1/8).
RADIUS_CASES = [(preset, {}) for preset in STUDENT_PRESETS] + [
    ("realtime", dict(stem_kernel=1)),
    ("realtime", dict(unshuffle=8, widths=[8, 8, 8], stem_kernel=1)),
    ("realtime", dict(unshuffle=8, widths=[8, 8, 8], stem_kernel=3)),
]


@pytest.mark.parametrize("preset, config", RADIUS_CASES)
def test_receptive_radius_is_exact(preset, config):
    """Inputs beyond the radius never reach an output pixel through the local path; inputs
    near it do. (The frame context, where a preset has one, reads everything: next test.)"""
    overrides = dict(frame_context=False, block_edges=False) | (dict(widths=[4, 4, 4]) if preset == "seed" else {}) | config
    model = randomised(build_student(preset, **overrides))
    radius, multiple = model.receptive_radius, model.size_multiple
    size = (2 * radius + 2 * multiple) // multiple * multiple + multiple
    x = torch.rand(1, 3, size, size, requires_grad=True)
    centre = size // 2 + 1  # odd offset inside a block: the worst case for the shuffle
    model(x)[0, :, centre, centre].sum().backward()
    reached = (x.grad.abs().sum(dim=(0, 1)) > 0).nonzero()
    furthest = (reached - centre).abs().max().item()
    assert furthest <= radius
    assert furthest >= radius - model.size_multiple


def test_frame_context_makes_every_pixel_read_the_whole_frame():
    local = randomised(build_student("realtime", frame_context=False, block_edges=False))
    framed = randomised(build_student("realtime", frame_context=True))
    assert framed.reads_whole_frame and not local.reads_whole_frame
    # A corner patch far outside the opposite corner's reach.
    size = (2 * local.receptive_radius + 64) // local.size_multiple * local.size_multiple
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    far = x.clone()
    reach = 16 + local.receptive_radius
    far[:, :, reach:, reach:] = 1 - far[:, :, reach:, reach:]
    with torch.no_grad():
        corner = [(m(far) - m(x))[0, :, :16, :16].abs().max().item() for m in (local, framed)]
    # The far patch moves the frame's average a little: ~1e-4 at the corner with these
    # weights, a thousand times float32's rounding of values near 1.
    assert corner[0] == 0 and corner[1] > 1e-5
    untrained = build_student("realtime", frame_context=True)
    with torch.no_grad():
        assert torch.equal(untrained(x), x)  # the context branch starts as no offset


def test_student_checkpoint_round_trip(tmp_path):
    model = randomised(build_student("realtime"))
    path = save_checkpoint(tmp_path / "student.pt", arch=model.arch, config=model.config,
                           state_dict=model.state_dict(), meta={"steps": 3},
                           train_state={"step": 3, "optimizer": {"lr": 1e-4}})
    loaded = load_student(path)
    x = torch.rand(1, 3, 32, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=1e-6)
    payload = load_checkpoint(path)
    assert payload["meta"] == {"steps": 3} and payload["train_state"]["step"] == 3


def test_interrupted_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    model = build_student("realtime")
    path = save_checkpoint(tmp_path / "student.pt", arch=model.arch, config=model.config,
                           state_dict=model.state_dict(), meta={"version": 1})
    before = path.read_bytes()

    def dies_halfway(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, arch=model.arch, config=model.config,
                        state_dict=model.state_dict(), meta={"version": 2})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["student.pt"]


def test_teacher_checkpoint_is_not_a_student(tmp_path):
    from models import RESTORMER_PRESETS, Restormer
    teacher = Restormer(**RESTORMER_PRESETS["tiny"])
    path = save_checkpoint(tmp_path / "teacher.pt", arch=teacher.arch, config=teacher.config,
                           state_dict=teacher.state_dict())
    with pytest.raises(CheckpointError, match="holds a restormer model, not a residual_unet"):
        load_student(path)


def test_released_restormer_file_is_not_a_sharpcam_checkpoint(tmp_path):
    path = tmp_path / "motion_deblurring.pth"
    torch.save({"params": {"x": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointError, match="not a SharpCam checkpoint"):
        load_student(path)


@pytest.mark.parametrize("preset", list(STUDENT_PRESETS))
def test_features_reach_the_head_at_their_scale(preset):
    """He initialisation: the features reaching the head start several times stronger than
    with PyTorch's default initialisation, from which a trained band-gain student stayed a
    fixed filter. Narrow random networks vary from draw to draw: four fixed draws each."""
    def head_input_scale(reinitialise) -> float:
        scales = []
        for seed in range(4):
            torch.manual_seed(seed)
            model = build_student(preset, widths=[8, 16, 32]) if preset == "seed" else build_student(preset)
            if reinitialise:
                for module in model.modules():
                    if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                        module.reset_parameters()
            seen = {}
            model.head.register_forward_pre_hook(lambda module, inputs: seen.update(x=inputs[0]))
            with torch.no_grad():
                model(torch.rand(1, 3, 64, 96))
            scales.append(seen["x"].abs().mean().item())
        return sum(scales) / len(scales)

    assert head_input_scale(reinitialise=False) > 2 * head_input_scale(reinitialise=True)


def test_python_m_models_lists_every_network_with_its_parameters_and_compute(capsys):
    from models.__main__ import main
    main()
    lines = capsys.readouterr().out.splitlines()
    rows = {line[:30].strip(): [float(v.replace(",", "")) for v in line[30:].split()] for line in lines[1:]}
    assert set(rows) == {f"student {name}" for name in STUDENT_PRESETS} | {"teacher restormer (released)"}
    for name in STUDENT_PRESETS:
        params, tile, frame = rows[f"student {name}"]
        assert params == sum(p.numel() for p in build_student(name).parameters())
        model = build_student(name)
        assert (tile, frame) == (round(gflop(model, 256, 256), 2), round(gflop(model, 720, 1280), 2))
        # Convolutions only: a 720p frame costs its pixels' worth of tiles, padded as sharpcam
        # pads it to the model's size multiple (720 rows are 736 with a multiple of 32).
        rows_computed = -(-720 // model.size_multiple) * model.size_multiple
        assert gflop(model, 720, 1280) == pytest.approx(gflop(model, 256, 256) * 1280 * rows_computed / 256 ** 2,
                                                        rel=0.002)
    assert rows["student realtime"][2] < 3  # the CPU budget the test above checks in detail


def test_compute_counts_the_frame_padded_to_the_size_multiple():
    # A multiple of 32 does not divide 720: sharpcam runs such a model on 736 rows.
    model = build_student("realtime", widths=[8, 16, 32, 64], blocks=[0, 1, 1, 1])
    assert model.size_multiple == 32
    assert gflop(model, 720, 1280) == gflop(model, 736, 1280) > gflop(model, 704, 1280)


def photo(name="astronaut"):
    import skimage.data
    rgb = getattr(skimage.data, name)().astype(np.float32) / 255.0
    return rgb


def luma_of(rgb):
    return torch.from_numpy(np.ascontiguousarray(rgb @ np.float32([0.299, 0.587, 0.114])))[None, None]


def test_block_edge_contrast_tells_compression_from_blur_and_noise():
    rng = np.random.default_rng(0)
    rgb = photo()
    natural = {"sharp": rgb, "blurred": degrade.gaussian_blur(rgb, rng, sigma=1.2),
               "noisy": degrade.sensor_noise(rgb, rng, photons=200.0, read_sigma=0.008),
               "rescaled": degrade.rescale(rgb, rng, factor=2.0, down="area", up="linear")}
    for name, image in natural.items():
        assert abs(block_edge_contrast(luma_of(image)).item()) < 0.06, name
    compressed = [block_edge_contrast(luma_of(degrade.jpeg(rgb, rng, quality=q))).item() for q in (90, 75, 40)]
    assert 0.1 < compressed[1] < compressed[2]  # JPEG q 75 is plain to see, q 40 more so
    assert compressed[0] < compressed[1]
    # The 8×8 grid is what it measures: shifted by 4 rows, a compressed frame's edges
    # fall where the middles were, and the contrast turns negative.
    shifted = degrade.jpeg(rgb, rng, quality=40)[4:]
    assert block_edge_contrast(luma_of(shifted)).item() < -0.1


def change_without_context_inputs(model, frame, inputs):
    """How far the output moves when the frame context's first convolution stops reading
    these of its input channels: whether a per-frame summary reaches the output."""
    with torch.no_grad():
        measured = model(frame)
        model.context.conv1.weight[:, inputs] = 0
        return (measured - model(frame)).abs().max().item()


def test_block_edges_feed_the_frame_context_and_start_as_the_identity():
    with pytest.raises(ValueError, match="needs bands and frame_context"):
        build_student("realtime", frame_context=False, block_edges=True)
    untrained = build_student("realtime", block_edges=True)
    x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(untrained(x), x)
    # A compressed photograph: its measure is far from 0, and it reaches the output
    # through the context's first convolution, in its last input channel.
    rgb = degrade.jpeg(photo()[:128, :192], np.random.default_rng(0), quality=40)
    frame = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None]
    model = randomised(build_student("realtime", block_edges=True))
    assert model.context.conv1.in_channels == model.context.conv2.out_channels + 1
    assert change_without_context_inputs(model, frame, -1) > 1e-4


def test_soft_peak_lies_between_mean_and_max_and_keeps_its_scale_on_bigger_frames():
    x = torch.randn(2, 5, 6, 6, generator=torch.Generator().manual_seed(0)) * 3
    peak = soft_peak(x)
    assert peak.shape == (2, 5, 1, 1)
    assert (peak >= x.mean(dim=(2, 3), keepdim=True)).all() and (peak <= x.amax(dim=(2, 3), keepdim=True)).all()
    # More cells of the same content: a hard maximum keeps growing (about 4 for 40,000
    # standard normal cells), the soft peak settles where the distribution puts it
    # (log E[exp(z)] = 1/2), as it would over a 96×96 crop's cells and a 720p frame's.
    cells = torch.randn(1, 1, 200, 200, generator=torch.Generator().manual_seed(1))
    assert cells.max().item() > 3.5 and abs(soft_peak(cells).item() - 0.5) < 0.05
    assert torch.allclose(soft_peak(torch.full((1, 2, 4, 4), 7.0)), torch.full((1, 2, 1, 1), 7.0))
    # One cell far above the rest leads it; the mean barely moves.
    spike = torch.zeros(1, 1, 8, 8)
    spike[..., 3, 3] = 20.0
    assert soft_peak(spike).item() > 15 and spike.mean().item() < 0.5


def test_context_peaks_join_the_frame_context_and_start_as_the_identity():
    with pytest.raises(ValueError, match="needs frame_context"):
        build_student("realtime", frame_context=False, block_edges=False, context_peaks=True)
    untrained = build_student("realtime", context_peaks=True)
    x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(untrained(x), x)
    model = randomised(build_student("realtime", context_peaks=True))
    width = model.context.conv2.out_channels
    assert model.context.conv1.in_channels == 2 * width + 1  # average, peaks, block edges
    assert change_without_context_inputs(model, x, slice(width, 2 * width)) > 1e-4


def test_soft_floor_lies_between_min_and_mean_and_keeps_its_scale_on_bigger_frames():
    x = torch.randn(2, 5, 6, 6, generator=torch.Generator().manual_seed(0))
    floor = soft_floor(x)
    assert floor.shape == (2, 5, 1, 1)
    assert (floor <= x.mean(dim=(2, 3), keepdim=True)).all() and (floor >= x.amin(dim=(2, 3), keepdim=True)).all()
    assert torch.allclose(soft_floor(torch.full((1, 2, 4, 4), -0.4)), torch.full((1, 2, 1, 1), -0.4))
    # A fifth of the cells flat (−0.8), the rest textured (+0.5): the floor sits near the
    # flat cells, the mean near the textured ones, and a frame a hundred times larger
    # with the same shares gives the same floor.
    cells = torch.full((1, 1, 10, 10), 0.5)
    cells[..., :2, :] = -0.8
    assert soft_floor(cells).item() < -0.55 and cells.mean().item() > 0.2
    assert abs(soft_floor(cells.repeat(1, 1, 10, 10)).item() - soft_floor(cells).item()) < 1e-5


def noise_floor_of(model, rgb):
    """The noise-floor measure of a float RGB image, as the model hands it to its frame
    context."""
    frame = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None].float()
    measured = {}
    hook = model.context.register_forward_pre_hook(lambda _, args: measured.update(floor=args[1][0, -1].item()))
    with torch.no_grad():
        model(frame)
    hook.remove()
    return measured["floor"]


def mean_fine_energy_of(model, rgb):
    """The fine band's log energy averaged over the frame's cells: what the floor is not."""
    frame = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None].float()
    with torch.no_grad():
        return model.cell_energies(model.bands(model.luma(frame)))[:, 0].mean().item()


def test_noise_floor_joins_the_frame_context_and_starts_as_the_identity():
    with pytest.raises(ValueError, match="needs band_energy and frame_context"):
        build_student("realtime", frame_context=False, block_edges=False, noise_floor=True)
    with pytest.raises(ValueError, match="needs band_energy and frame_context"):
        build_student("realtime", band_energy=False, noise_floor=True)
    untrained = build_student("realtime", noise_floor=True)
    x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(untrained(x), x)
    model = randomised(build_student("realtime", noise_floor=True))
    width = model.context.conv2.out_channels
    assert model.context.conv1.in_channels == width + 2  # average, block edges, noise floor
    assert change_without_context_inputs(model, x, -1) > 1e-4


def test_noise_floor_reads_the_flat_parts_whatever_the_texture_beside_them():
    """A frame half flat grey wall, half photo: the floor follows the wall's noise, and
    barely moves when the other half turns from a portrait into dense grass, which lifts
    the energies' average by far more."""
    import skimage.data
    model = build_student("realtime", noise_floor=True)
    rng = np.random.default_rng(0)
    portrait = photo()[:256, 128:384]
    grass = np.repeat(skimage.data.grass()[:256, :256, None].astype(np.float32) / 255.0, 3, axis=2)
    def frame(right, photons=None):
        wall = np.full((256, 256, 3), 0.5, np.float32)
        if photons:
            wall = degrade.sensor_noise(wall, rng, photons=photons, read_sigma=0.002)
        return np.concatenate([wall, right], axis=1)
    floors = {(name, photons): noise_floor_of(model, frame(right, photons))
              for name, right in (("portrait", portrait), ("grass", grass)) for photons in (None, 2000.0)}
    means = [mean_fine_energy_of(model, frame(right)) for right in (portrait, grass)]
    assert abs(floors["grass", None] - floors["portrait", None]) < 0.05
    assert means[1] - means[0] > 0.2
    assert floors["portrait", 2000.0] > floors["portrait", None] + 0.3
    assert floors["grass", 2000.0] > floors["grass", None] + 0.3
