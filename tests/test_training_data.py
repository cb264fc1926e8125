"""Data: folder scanning, the file-level split, paired matching, corrupt files, determinism."""
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from training import data
from training.degrade import get_preset
from training.errors import UsageError


def write_images(folder: Path, names, size=(48, 40), seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8))
    return folder


def test_list_images_is_recursive_and_filters_extensions(tmp_path):
    write_images(tmp_path, ["a.png", "sub/b.jpg", "sub/deeper/c.bmp", "d.webp"])
    (tmp_path / "notes.txt").write_text("x")
    names = [str(p.relative_to(tmp_path)) for p in data.list_images(tmp_path)]
    assert sorted(names) == sorted(["a.png", "sub/b.jpg", "sub/deeper/c.bmp", "d.webp"])


def test_missing_or_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        data.list_images(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no images"):
        data.list_images(tmp_path / "empty")


def test_split_is_deterministic_disjoint_and_holds_one_out():
    names = [f"img{i:03d}.png" for i in range(40)]
    train, val = data.split_names(names)
    assert data.split_names(list(reversed(names))) == (train, val)
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(names)
    assert 1 <= len(val) <= 14
    t2, v2 = data.split_names(["a.png", "b.png"])
    assert len(t2) == 1 and len(v2) == 1


def test_builtin_photos_load_and_hold_several_out():
    source = data.load_source()
    assert source.kind == "builtin"
    assert len(source.val_images) >= 3 and len(source.train_images) >= 8
    assert {f.name for f in source.train_files}.isdisjoint(f.name for f in source.val_files)


def test_corrupt_files_are_skipped_and_counted_in_one_line(tmp_path, capsys):
    write_images(tmp_path, [f"ok{i}.png" for i in range(4)])
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    (tmp_path / "empty.jpg").write_bytes(b"")
    files, images = data.load_images(data.list_images(tmp_path))
    assert len(images) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "skipped 2" in err[0]


def test_paired_matching_reports_unmatched_names(tmp_path, capsys):
    write_images(tmp_path / "blur", ["0001.png", "0002.png", "0003.png", "only_blur.png"])
    write_images(tmp_path / "sharp", ["0001.png", "0002.png", "0003.png", "only_sharp.png"])
    pairs = data.match_pairs(tmp_path / "blur", tmp_path / "sharp")
    assert [n for n, _, _ in pairs] == ["0001.png", "0002.png", "0003.png"]
    err = capsys.readouterr().err
    assert "only_blur.png" in err and "only_sharp.png" in err and err.count("\n") == 1
    with pytest.raises(UsageError, match="no file name appears in both"):
        write_images(tmp_path / "other", ["x.png"])
        data.match_pairs(tmp_path / "blur", tmp_path / "other")


def test_paired_resize_reproduces_original_protocol(tmp_path):
    write_images(tmp_path / "blur", [f"{i}.png" for i in range(6)], size=(300, 200))
    write_images(tmp_path / "sharp", [f"{i}.png" for i in range(6)], size=(300, 200), seed=1)
    source = data.load_source(paired=[str(tmp_path / "blur"), str(tmp_path / "sharp")])
    ds = data.train_dataset(source, crop=256, degradation="seed", seed=0, crops_per_image=1, resize=256)
    blurred, sharp = ds[0]
    assert blurred.shape == sharp.shape == (3, 256, 256)
    # With crop == resize the whole resized image is the sample (up to flips/rotations).
    b0 = cv2.resize(source.train_images[0][0], (256, 256), interpolation=cv2.INTER_AREA)
    assert np.isclose(np.sort(blurred.numpy().ravel()), np.sort(b0.transpose(2, 0, 1).ravel())).all()


def test_synthetic_samples_are_deterministic_per_key_and_cropped(tmp_path):
    write_images(tmp_path, [f"{i}.png" for i in range(3)], size=(80, 70))
    source = data.load_source(data=str(tmp_path))
    ds = data.train_dataset(source, crop=64, degradation="webcam", seed=5, crops_per_image=2)
    a, b = ds[3], ds[3]
    assert a[0].shape == (3, 64, 64)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(ds[3][1], ds[4][1])


def test_contrast_flattens_the_sharp_crop_and_its_degraded_frame_alike(tmp_path):
    write_images(tmp_path, [f"{i}.png" for i in range(3)], size=(80, 70))
    source = data.load_source(data=str(tmp_path))
    # σ 0.5 blur alone: linear, so a flattened crop blurs into the flattened blur.
    plain = data.train_dataset(source, crop=64, degradation="seed", seed=5, crops_per_image=2)
    flat = data.train_dataset(source, crop=64, degradation="seed", seed=5, crops_per_image=2,
                              contrast=(0.5, 0.5))
    for key in range(4):
        (before, before_sharp), (after, after_sharp) = plain[key], flat[key]
        # The same crop, its deviations from the mean halved, in target and input alike.
        mean = before_sharp.mean()
        assert torch.allclose(after_sharp - mean, 0.5 * (before_sharp - mean), atol=1e-5)
        assert torch.allclose(after - mean, 0.5 * (before - mean), atol=1e-4)
    # Without --contrast the samples are the ones every earlier run drew.
    again = data.train_dataset(source, crop=64, degradation="webcam", seed=5, crops_per_image=2)
    first = data.train_dataset(source, crop=64, degradation="webcam", seed=5, crops_per_image=2, contrast=None)
    assert all(torch.equal(a, b) for key in range(4) for a, b in zip(again[key], first[key]))


def test_photo_scale_cuts_the_crop_from_the_photo_seen_smaller():
    # A photo whose columns count pixels: a crop seen at half size spans twice the columns,
    # each output pixel the area mean of two.
    ramp = np.broadcast_to(np.arange(400, dtype=np.float32)[None, :, None] / 400, (300, 400, 3)).copy()
    crop = data.scaled_crop(ramp, 32, np.random.default_rng(0), 0.5, 0.5)
    assert crop.shape == (32, 32, 3)
    steps = np.diff(crop[0, :, 0] * 400)
    assert np.allclose(steps, 2, atol=1e-3)
    # Area mean, not a sample: the first column sits half a source pixel in.
    assert abs(crop[0, 0, 0] * 400 - round(crop[0, 0, 0] * 400 - 0.5) - 0.5) < 1e-3
    # At full size it is a plain crop.
    full = data.scaled_crop(ramp, 32, np.random.default_rng(0), 1, 1)
    assert np.allclose(np.diff(full[0, :, 0] * 400), 1, atol=1e-3)


def test_photo_scale_reaches_the_training_crops_and_is_off_by_default(tmp_path):
    write_images(tmp_path, [f"{i}.png" for i in range(3)], size=(200, 180))
    source = data.load_source(data=str(tmp_path))
    plain = data.train_dataset(source, crop=64, degradation="seed", seed=5, crops_per_image=2)
    scaled = data.train_dataset(source, crop=64, degradation="seed", seed=5, crops_per_image=2, scale=(0.5, 0.5))
    for key in range(4):
        (_, sharp), (_, small) = plain[key], scaled[key]
        assert small.shape == sharp.shape
        # Seen at half size, the same noise photo has half as much of its fine detail per
        # pixel left after area averaging: the pixel-to-pixel steps shrink.
        step = lambda t: (t[:, :, 1:] - t[:, :, :-1]).abs().mean()
        assert step(small) < 0.8 * step(sharp)
    # Without --photo-scale the samples are the ones every earlier run drew: a plain crop,
    # flipped, degraded, from the same random stream.
    first = data.train_dataset(source, crop=64, degradation="webcam", seed=5, crops_per_image=2, scale=None)
    for key in range(4):
        rng = data.sample_rng(5, key)
        (sharp,) = data.random_crop([source.train_images[key % len(source.train_images)]], 64, rng)
        (sharp,) = data.random_flip_rotate([sharp], rng)
        degraded = get_preset("webcam")(sharp, rng)
        assert torch.equal(first[key][0], data.to_tensor(degraded))
        assert torch.equal(first[key][1], data.to_tensor(sharp))


def test_run_sampler_shards_epochs_over_ranks_and_skips_for_resume():
    full = list(data.RunSampler(10, 0, 2, start_epoch=2, end_epoch=3))
    assert sorted(k - 20 for k in full) == list(range(10))
    r0 = list(data.RunSampler(10, 0, 1, rank=0, world=2, start_epoch=2, end_epoch=3))
    r1 = list(data.RunSampler(10, 0, 1, rank=1, world=2, start_epoch=2, end_epoch=3))
    assert set(r0).isdisjoint(r1) and len(r0) == len(r1) == 5
    assert list(data.RunSampler(10, 0, 2, start_epoch=2, end_epoch=3, skip_batches=2)) == full[4:]
    two = list(data.RunSampler(10, 0, 2, start_epoch=2, end_epoch=4))
    assert two[:10] == full and sorted(k - 30 for k in two[10:]) == list(range(10)) and two[10:] != [
        k + 10 for k in full]  # the next epoch is shuffled afresh


def test_unpaired_samples_have_no_target(tmp_path):
    write_images(tmp_path, [f"{i}.png" for i in range(3)], size=(64, 64))
    source = data.load_source(unpaired=str(tmp_path))
    sample = data.train_dataset(source, crop=32, degradation="webcam", seed=0, crops_per_image=1)[0]
    assert len(sample) == 1 and sample[0].shape == (3, 32, 32)


def test_a_corpus_manifest_decides_the_split_and_a_broken_one_is_one_line(tmp_path):
    import json
    for name in ("a.png", "b.png", "c.png", "sub/d.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        cv2.imwrite(str(tmp_path / name), np.full((40, 40, 3), 128, np.uint8))
    _, hashed_val = data.split_names(["a.png", "b.png", "c.png", "sub/d.png"], 0.15)
    chosen = "sub/d.png" if hashed_val != ["sub/d.png"] else "a.png"
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"files": [{"file": n, "split": "val" if n == chosen else "train"} for n in ("a.png", "b.png", "sub/d.png")]}))
    source = data.load_source(data=str(tmp_path))
    assert [f.relative_to(tmp_path).as_posix() for f in source.val_files] == [chosen]
    assert len(source.train_files) == 3  # c.png is not in the manifest: a user's addition, trained on
    (tmp_path / "manifest.json").write_text('{"files": [{"file": "a.png"}]}')
    with pytest.raises(UsageError, match="not a readable corpus manifest.*training.corpus"):
        data.load_source(data=str(tmp_path))


def test_fresh_text_crops_are_seeded_pages_of_print_softened_on_request():
    from training.text_pages import text_crop
    crop = text_crop(96, np.random.default_rng(0), soft_share=0.0, enlarged_share=0.0)
    assert crop.shape == (96, 96, 3) and crop.dtype == np.float32 and 0 <= crop.min() and crop.max() <= 1
    assert np.array_equal(crop, text_crop(96, np.random.default_rng(0), soft_share=0.0, enlarged_share=0.0))
    assert not np.array_equal(crop, text_crop(96, np.random.default_rng(1), soft_share=0.0, enlarged_share=0.0))
    # Flat ground under strokes with the contrast of ink on paper...
    steps = np.abs(np.diff(crop.mean(axis=2), axis=1))
    assert np.median(steps) < 0.02 and np.percentile(steps, 99) > 0.2
    # ... and the same page photographed a little soft has less energy in its steps.
    soft = text_crop(96, np.random.default_rng(0), soft_share=1.0, enlarged_share=0.0)
    assert (np.diff(soft.mean(axis=2), axis=1) ** 2).mean() < 0.8 * (steps ** 2).mean()


def test_enlarged_text_crops_are_a_smaller_page_blown_up():
    from training.text_pages import TEXT_CROP_ENLARGEMENT, text_crop, text_page
    large = text_crop(96, np.random.default_rng(3), enlarged_share=1.0)
    assert large.shape == (96, 96, 3) and large.dtype == np.float32 and 0 <= large.min() and large.max() <= 1
    replay = np.random.default_rng(3)
    replay.random()
    factor = replay.uniform(*TEXT_CROP_ENLARGEMENT)
    side = int(round(96 / factor))
    assert 96 / TEXT_CROP_ENLARGEMENT[1] - 1 <= side <= 96 / TEXT_CROP_ENLARGEMENT[0] + 1
    small = text_page(side, replay).astype(np.float32) / 255
    assert np.allclose(large, np.clip(cv2.resize(small, (96, 96), interpolation=cv2.INTER_CUBIC), 0, 1), atol=1e-6)
    # Wide soft strokes: its steps carry less energy than small print's, with nothing blurred.
    crisp = text_crop(96, np.random.default_rng(3), soft_share=0.0, enlarged_share=0.0)
    energy = lambda img: (np.diff(img.mean(axis=2), axis=1) ** 2).mean()
    assert energy(large) < 0.6 * energy(crisp)
    # The share is a probability: never at 0, always at 1.
    draws = [np.random.default_rng(k) for k in range(20)]
    assert all(not np.allclose(text_crop(32, rng, enlarged_share=0.0),
                               text_crop(32, np.random.default_rng(k), enlarged_share=1.0))
               for k, rng in enumerate(draws))


def test_text_page_crops_pair_each_fresh_page_with_its_degraded_frame():
    from training.text_pages import text_crop
    pages = data.TextPageCrops(64, "seed", seed=5, length=3)
    assert len(pages) == 3
    degraded, sharp = pages[1]
    assert degraded.shape == sharp.shape == (3, 64, 64)
    expected = text_crop(64, data.sample_rng(5, 1))
    assert torch.allclose(sharp, data.to_tensor(expected))
    assert float((degraded - sharp).abs().mean()) > 1e-3  # the preset's blur was applied
    again, _ = pages[1]
    assert torch.equal(degraded, again) and not torch.equal(sharp, pages[2][1])
