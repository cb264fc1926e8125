"""Degradations: deterministic per seed, and each does what its name says."""
import numpy as np
import pytest

from training import degrade
from training.errors import UsageError


def textured(h=96, w=96, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.random((h // 4, w // 4, 3)).astype(np.float32)
    import cv2
    img = cv2.resize(base, (w, h), interpolation=cv2.INTER_NEAREST)  # sharp edges
    return np.clip(img + 0.1 * rng.random((h, w, 3), dtype=np.float32), 0, 1)


def high_freq_energy(img):
    gray = img.mean(axis=2)
    lap = gray[1:-1, 1:-1] * 4 - gray[:-2, 1:-1] - gray[2:, 1:-1] - gray[1:-1, :-2] - gray[1:-1, 2:]
    return float((lap ** 2).mean())


@pytest.mark.parametrize("name", sorted(degrade.DEGRADATIONS))
def test_each_degradation_is_deterministic_and_keeps_shape(name):
    img = textured()
    a = degrade.DEGRADATIONS[name](img, np.random.default_rng(3))
    b = degrade.DEGRADATIONS[name](img, np.random.default_rng(3))
    assert a.shape == img.shape and a.dtype == np.float32
    assert 0.0 <= a.min() and a.max() <= 1.0
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, img)


@pytest.mark.parametrize("name", ["gaussian", "defocus", "motion", "rescale"])
def test_blurs_lower_high_frequency_energy(name):
    img = textured()
    out = degrade.component(name)(img, np.random.default_rng(0))
    assert high_freq_energy(out) < 0.6 * high_freq_energy(img)


def test_jpeg_low_quality_differs_more_than_high_quality():
    img = textured()
    rng = np.random.default_rng(0)
    err30 = np.abs(degrade.jpeg(img, rng, quality=30) - img).mean()
    err95 = np.abs(degrade.jpeg(img, rng, quality=95) - img).mean()
    assert err30 > 1.5 * err95


def test_noise_is_zero_mean_and_grows_in_low_light():
    img = np.full((64, 64, 3), 0.5, np.float32)
    dim = degrade.sensor_noise(img, np.random.default_rng(0), photons=30, read_sigma=0.0)
    bright = degrade.sensor_noise(img, np.random.default_rng(0), photons=1000, read_sigma=0.0)
    assert abs(dim.mean() - 0.5) < 0.01
    assert dim.std() > 3 * bright.std()


def test_seed_preset_is_gaussian_sigma_half():
    img = textured()
    out = degrade.PRESETS["seed"](img, np.random.default_rng(123))
    np.testing.assert_array_equal(out, degrade.gaussian_blur(img, np.random.default_rng(0), sigma=0.5))


def test_webcam_preset_deterministic_with_untouched_share_byte_equal():
    img = textured(64, 64)
    untouched = 0
    n = 300
    for seed in range(n):
        a = degrade.PRESETS["webcam"](img, np.random.default_rng(seed))
        b = degrade.PRESETS["webcam"](img, np.random.default_rng(seed))
        np.testing.assert_array_equal(a, b)
        if a.tobytes() == img.tobytes():
            untouched += 1
    assert 0.02 * n <= untouched <= 0.09 * n  # 5 %


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(UsageError, match="unknown degradation preset"):
        degrade.get_preset("nope")


def test_harsh_preset_is_deterministic_and_noisier_than_webcam():
    # A flat grey frame: blur cannot change it, so what changes is the noise (and JPEG).
    img = np.full((64, 64, 3), 0.5, np.float32)
    changes = {"webcam": [], "harsh": []}
    for seed in range(120):
        for name in changes:
            a = degrade.PRESETS[name](img, np.random.default_rng(seed))
            np.testing.assert_array_equal(a, degrade.PRESETS[name](img, np.random.default_rng(seed)))
            changes[name].append(np.abs(a - img).mean())
    assert np.mean(changes["webcam"]) < 0.5 * np.mean(changes["harsh"])


def test_every_component_has_a_mild_and_a_moderate_strength_that_orders_them():
    # Smooth enough to be photo-like: on pixel noise a ×1.5 rescale aliases more than ×2.
    img = degrade.gaussian_blur(textured(96, 96), np.random.default_rng(0), sigma=1.5)
    for name in {k.removesuffix("_mild") for k in degrade.COMPONENTS}:
        mild = degrade.component(f"{name}_mild")(img, np.random.default_rng(0))
        moderate = degrade.component(name)(img, np.random.default_rng(0))
        assert np.abs(mild - img).mean() < np.abs(moderate - img).mean(), name


def test_webcam_compressed_leaves_a_tenth_in_focus_but_compressed():
    img = textured(96, 96)
    sharp_energy = high_freq_energy(img)
    in_focus_changed = {"webcam": 0, "webcam-compressed": 0}
    n = 300
    for name in in_focus_changed:
        for seed in range(n):
            out = degrade.PRESETS[name](img, np.random.default_rng(seed))
            np.testing.assert_array_equal(out, degrade.PRESETS[name](img, np.random.default_rng(seed)))
            # Not blurred (all the fine detail is still there), yet not the input: compressed.
            if high_freq_energy(out) >= 0.99 * sharp_energy and out.tobytes() != img.tobytes():
                in_focus_changed[name] += 1
    assert in_focus_changed["webcam"] == 0  # every frame that `webcam` touches is softened
    assert 0.05 * n <= in_focus_changed["webcam-compressed"] <= 0.16 * n  # 10 %


def test_the_anchored_fine_tunes_halves_one_never_compressed_one_always(monkeypatch):
    img = textured(96, 96)
    sharp_energy = high_freq_energy(img)
    calls = []
    jpeg = degrade.jpeg
    monkeypatch.setattr(degrade, "jpeg", lambda image, rng, quality=None: calls.append(quality) or
                        jpeg(image, rng, quality))
    n = 200
    for seed in range(n):
        degrade.PRESETS["webcam-uncompressed"](img, np.random.default_rng(seed))
    assert calls == []  # the camera's raw stream: never the codec
    in_focus = 0
    for seed in range(n):
        out = degrade.PRESETS["compressed"](img, np.random.default_rng(seed))
        assert len(calls) == seed + 1  # the codec, once per frame
        if high_freq_energy(out) >= 0.99 * sharp_energy:
            in_focus += 1
            assert 50 <= calls[-1] <= 85  # in focus: a quality whose 8×8 blocks show
    assert 0.5 * n <= in_focus <= 0.7 * n  # 60 %
