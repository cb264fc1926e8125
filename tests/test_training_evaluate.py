"""The evaluation's measures: the tuned unsharp-mask baseline, SSIM, and flicker over time."""
import numpy as np
import pytest
from skimage.metrics import structural_similarity

from sharpcam.sharpen import unsharp_mask
from training import evaluate, flicker
from training.quality import psnr, ssim


def photo_like(h=96, w=128, seed=0):
    rng = np.random.default_rng(seed)
    import cv2
    blocks = cv2.resize(rng.random((h // 8, w // 8, 3)), (w, h), interpolation=cv2.INTER_NEAREST)
    return (0.2 + 0.6 * blocks).astype(np.float32)  # away from 0 and 1: no clipping


def test_ssim_is_scikit_images():
    rng = np.random.default_rng(1)
    a = rng.random((40, 52, 3))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    assert ssim(a, b) == pytest.approx(structural_similarity(a, b, channel_axis=2, data_range=1.0), abs=1e-9)


def test_tuned_unsharp_amount_is_the_best_on_the_grid():
    samples = []
    for seed in range(3):
        sharp = photo_like(seed=seed)
        soft = evaluate.degrade.gaussian_blur(sharp, np.random.default_rng(seed), sigma=1.0)
        samples.append((soft, sharp))
    scores = {a: np.mean([psnr(s, unsharp_mask(d, a)) for d, s in samples]) for a in evaluate.TUNED_AMOUNTS}
    best = evaluate.tuned_unsharp_amount(samples)
    assert best > 0.5  # σ 1 blur wants real sharpening
    assert scores[best] >= max(scores.values()) - 0.02
    assert evaluate.tuned_unsharp_amount([(s, s) for _, s in samples]) == 0.0  # clean: leave it alone


def test_rows_hold_every_preset_with_both_unsharp_masks():
    images = [photo_like(64, 96, seed) for seed in range(2)]
    table, amounts = evaluate.evaluate_rows(images, 0, 0, {"identity": evaluate.identity})
    assert list(table) == evaluate.PRESETS and set(amounts) == set(evaluate.PRESETS)
    for preset, row in table.items():
        assert set(row) == {"input", "unsharp", "unsharp_tuned", "identity"}
        assert row["identity"] == row["input"]
        assert row["unsharp_tuned"]["psnr"] >= row["input"]["psnr"] - 1e-9, preset  # ×0 is on the grid
    assert table["seed"]["input"]["psnr"] < 100 and table["clean"]["unsharp_tuned"]["psnr"] == 100


def block_edge_contrast(image):
    """log(mean luma step across the 8×8 grid's rows / across the blocks' middles)."""
    y = image @ np.array([0.299, 0.587, 0.114])
    return np.log((np.abs(y[8::8] - y[7:-1:8]).mean() + 1e-3) / (np.abs(y[4::8] - y[3:-1:8]).mean() + 1e-3))


def test_the_camera_sharp_row_is_the_photo_in_focus_with_faint_noise_and_its_codec():
    import cv2
    rng = np.random.default_rng(0)
    # Smooth, so no edge of its own falls on the 8×8 grid: the grid is all the codec's.
    photo = (0.2 + 0.6 * cv2.resize(rng.random((5, 7, 3)), (128, 96), interpolation=cv2.INTER_CUBIC)
             .clip(0, 1)).astype(np.float32)
    degraded, sharp = evaluate.degrade_for("camera_sharp", photo, np.random.default_rng(1))
    assert sharp is photo  # nothing softened or resized: the photo itself is the answer
    assert np.array_equal(degraded * 255, np.round(degraded * 255))  # an 8-bit frame
    noisy_only = evaluate.degrade.camera_frame(evaluate.degrade.sensor_noise(
        photo, np.random.default_rng(1), photons=evaluate.degrade.CAMERA_SHARP_PHOTONS, read_sigma=0.0))
    assert block_edge_contrast(degraded) > 0.15 > block_edge_contrast(noisy_only)  # through the codec
    compressed_only = evaluate.degrade.jpeg(photo, None, quality=evaluate.degrade.CAMERA_SHARP_QUALITY)
    assert 40 < psnr(photo, degraded) < psnr(photo, compressed_only)  # faint, and noise on top of the codec


def test_flicker_is_zero_for_a_constant_video_and_grows_with_noise():
    flat = np.ones((48, 64), bool)
    still = [np.full((48, 64, 3), 0.4, np.float32)] * 5
    assert flicker.flicker(still, flat) == 0.0
    rng = np.random.default_rng(0)
    noisy = [np.clip(f + rng.normal(0, 0.01, f.shape), 0, 1).astype(np.float32) for f in still]
    noisier = [np.clip(f + rng.normal(0, 0.03, f.shape), 0, 1).astype(np.float32) for f in still]
    assert 0 < flicker.flicker(noisy, flat) < flicker.flicker(noisier, flat)


def test_pan_flicker_compares_the_same_scene_point():
    scene = photo_like(48, 100)
    step, frames = 3, 5
    width = scene.shape[1] - step * (frames - 1)
    pan = [scene[:, t * step:t * step + width] for t in range(frames)]  # noiseless: nothing flickers
    flat = np.ones(scene.shape[:2], bool)
    assert flicker.flicker(pan, flat, step) == 0.0
    assert flicker.flicker(pan, flat, 0) > 1.0  # uncompensated, the motion itself looks like flicker


def test_unsharp_mask_raises_both_flicker_and_edge_contrast():
    image = photo_like(96, 128)
    result = flicker.measure([image], {"unsharp": unsharp_mask}, size=(96, 128))
    assert result["unsharp"]["static_flicker"] > result["input"]["static_flicker"]
    assert result["unsharp"]["static_edge_contrast"] > result["input"]["static_edge_contrast"]
    assert result["input"]["static_edge_contrast"] < 1  # the clips are softened


@pytest.mark.parametrize("make_model", ["half_size_model", "one_channel_model"])
def test_a_model_with_the_wrong_output_shape_is_one_error_line(make_model, tmp_path, monkeypatch):
    import cv2
    import conftest
    model = getattr(conftest, make_model)(tmp_path / "bad.onnx")
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        cv2.imwrite(str(photos / f"p{i}.png"), (photo_like(64, 64, i) * 255).astype(np.uint8))
    with pytest.raises(SystemExit) as stop:
        evaluate.main(["--student", str(model), "--data", str(photos), "--out", str(tmp_path / "e"),
                       "--rows", "clean", "--no-flicker", "--no-speed"])
    message = str(stop.value)
    assert message.startswith("error: ") and "\n" not in message and "bad.onnx" in message


def test_images_scores_every_file_and_folder_given_none_held_back(test_model, tmp_path):
    import cv2
    folder = tmp_path / "faces"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"f{i}.png"), (photo_like(64, 64, i) * 255).astype(np.uint8))
    single = tmp_path / "portrait.jpg"
    cv2.imwrite(str(single), (photo_like(64, 64, 9) * 255).astype(np.uint8))
    report = evaluate.main(["--student", str(test_model), "--images", str(single), str(folder),
                            "--out", str(tmp_path / "e"), "--rows", "clean", "--no-flicker", "--no-speed"])
    # A held-out split of four files would keep one or two; every file given is scored.
    assert report["images"] == 4
    assert sorted(report["files"]) == ["f0.png", "f1.png", "f2.png", "portrait.jpg"]
    assert "never trained on" in report["source"]


@pytest.mark.parametrize("problem", ["with --data", "not an image", "missing"])
def test_a_wrong_images_argument_is_one_error_line(problem, test_model, tmp_path):
    import cv2
    photo = tmp_path / "p.png"
    cv2.imwrite(str(photo), (photo_like(64, 64) * 255).astype(np.uint8))
    given, named = {"with --data": ([str(photo), "--data", str(tmp_path)], "--data"),
                    "not an image": ([str(tmp_path / "notes.txt")], "notes.txt' is not an image"),
                    "missing": ([str(tmp_path / "gone.png")], "gone.png' does not exist")}[problem]
    (tmp_path / "notes.txt").write_text("not a photo")
    with pytest.raises(SystemExit) as stop:
        evaluate.main(["--student", str(test_model), "--images", *given, "--out", str(tmp_path / "e"),
                       "--rows", "clean", "--no-flicker", "--no-speed"])
    message = str(stop.value)
    assert message.startswith("error: ") and "\n" not in message
    assert named in message


def test_progress_advances_once_per_image_and_row():
    images = [photo_like(48, 64, seed) for seed in range(3)]
    ticks = []
    evaluate.evaluate_rows(images, 0, 0, {}, ["clean", "webcam", "jpeg"], ticks.append)
    assert sum(ticks) == 3 + 3 * evaluate.MIX_DRAWS + 3


def test_the_mix_row_scores_several_different_chains_of_each_image():
    images = [photo_like(48, 64, seed) for seed in range(2)]
    pairs = evaluate.build_pairs(images, 0, ["webcam", "gaussian"], seed=0)["webcam"]
    assert evaluate.MIX_DRAWS >= 2 and len(pairs) == 2 * evaluate.MIX_DRAWS
    first_image = [degraded for degraded, sharp in pairs if sharp is images[0]]
    assert len(first_image) == evaluate.MIX_DRAWS
    assert len({d.tobytes() for d in first_image}) == evaluate.MIX_DRAWS  # distinct draws
    again = evaluate.build_pairs(images, 0, ["webcam"], seed=0)["webcam"]
    assert all(np.array_equal(a, b) for (a, _), (b, _) in zip(pairs, again))  # and reproducible


def test_every_column_starts_from_the_8_bit_frame_a_camera_delivers():
    images = [photo_like(48, 64, seed) for seed in range(2)]
    pairs = evaluate.build_pairs(images, 0, ["gaussian_mild", "noise", "webcam", "seed"], seed=0)
    for row, samples in pairs.items():
        for degraded, sharp in samples:
            assert degraded.dtype == np.float32 and degraded.shape == sharp.shape
            levels = degraded.astype(np.float64) * 255
            assert np.abs(levels - np.round(levels)).max() < 1e-3, row


def red_only_model(path):
    """Keeps the red channel (the engine's input is RGB) and zeroes green and blue."""
    import conftest
    return conftest.build_mapping_model(path, lambda helper, nh: (
        [helper.make_node("Mul", ["image", "keep"], ["sharpened"])],
        [nh.from_array(np.array([1, 0, 0], np.float32).reshape(1, 3, 1, 1), "keep")]))


def test_the_onnx_column_feeds_the_engine_rgb_as_sharpcam_does(tmp_path):
    from sharpcam.engine import Engine
    image = photo_like(64, 96)
    with Engine(str(red_only_model(tmp_path / "red.onnx")), device="cpu", threads=1) as engine:
        out = evaluate.sharpcam_restorer(engine)(image)
    np.testing.assert_allclose(out[..., 0], image[..., 0], atol=1 / 255)
    assert np.abs(out[..., 1:]).max() == 0


class PixelClockEngine:
    """A stand-in engine whose every run advances a fake clock by one millisecond per
    thousand pixels, so the speed table's arithmetic is checked without timing anything."""
    receptive_radius, size_multiple, reads_whole_frame = 8, 16, False

    def __init__(self):
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def run(self, batch):
        self.now += batch.shape[0] * batch.shape[2] * batch.shape[3] / 1e6
        return batch


def test_speed_table_is_the_median_time_per_tile_and_frame(monkeypatch):
    from sharpcam.tiling import Tiler
    engine = PixelClockEngine()
    monkeypatch.setattr(evaluate.time, "perf_counter", engine.clock)
    speed = evaluate.measure_speed(engine, repeats=3)
    assert speed["tile_256_ms"] == pytest.approx(256 * 256 / 1000)
    for name, tile in (("tiled_256", 256), ("whole_frame", 0)):
        tiler = Tiler(720, 1280, tile=tile, receptive_radius=8, size_multiple=16)
        batch = tiler.to_batch(np.zeros((720, 1280, 3), np.uint8))
        assert speed[f"720p_{name}_ms"] == pytest.approx(batch.shape[0] * batch.shape[2] * batch.shape[3] / 1000)
    # Overlapping tiles compute more pixels than the whole frame, so the whole frame wins.
    assert speed["720p_tiled_256_ms"] > speed["720p_whole_frame_ms"]
    assert speed["720p_fps"] == pytest.approx(1000 / speed["720p_whole_frame_ms"])


def test_a_missing_student_names_the_option_to_fix(tmp_path):
    with pytest.raises(SystemExit) as stop:
        evaluate.main(["--student", str(tmp_path / "none.onnx"), "--out", str(tmp_path / "e")])
    message = str(stop.value)
    assert message.startswith("error: --student ") and "none.onnx" in message and "\n" not in message


def _row(input_db, unsharp_db, tuned_db, student_db):
    return {"input": {"psnr": input_db, "ssim": 0.9}, "unsharp": {"psnr": unsharp_db, "ssim": 0.9},
            "unsharp_tuned": {"psnr": tuned_db, "ssim": 0.9}, "student_onnx": {"psnr": student_db, "ssim": 0.9}}


def test_release_bars_hold_each_row_to_its_own_baseline():
    table = {
        "clean": _row(100.0, 40.8, 100.0, 39.9),          # under the 40 dB floor
        "camera_sharp": _row(43.7, 41.9, 43.7, 42.0),     # past the fixed mask, yet worse than the input
        "webcam": _row(34.0, 34.5, 34.6, 34.55),          # past the fixed mask, not the tuned one
        "gaussian_mild": _row(37.7, 40.4, 41.7, 41.8),    # past the tuned mask
        "gaussian": _row(33.3, 34.1, 36.0, 34.2),         # past the fixed mask is enough here
        "motion_mild": _row(34.6, 35.32, 35.5, 35.32),    # a tie with the fixed mask is no win
        "jpeg_mild": _row(38.37, 35.2, 38.37, 38.368),    # a tie with the input is no harm
        "noise": _row(26.0, 22.8, 26.0, 25.9),            # worse than the input
    }
    bars = {b["row"]: b for b in evaluate.release_bars(table)}
    assert {row: b["met"] for row, b in bars.items()} == {
        "clean": False, "camera_sharp": False, "webcam": False, "gaussian_mild": True, "gaussian": True,
        "motion_mild": False, "jpeg_mild": True, "noise": False}
    assert bars["webcam"]["baseline"] == 34.6 and bars["gaussian"]["baseline"] == 34.1
    assert abs(bars["noise"]["margin"] + 0.1) < 1e-9


def test_the_noisy_clip_bar_needs_sharper_edges_and_no_more_flicker():
    clip = lambda flicker, edges: {"static_flicker": flicker, "static_edge_contrast": edges}
    table = {"gaussian": _row(33.3, 34.1, 36.0, 34.2)}
    def met(student):
        bars = evaluate.release_bars(table, {"input": clip(8.0, 0.74), "student_onnx": student})
        return [b["met"] for b in bars if b["row"] == "noisy still clip"]
    assert met(clip(4.0, 0.80)) == [True]
    assert met(clip(9.0, 0.80)) == [False]   # sharper, but flickers more than the input
    assert met(clip(4.0, 0.74)) == [False]   # calm, but no sharper
    assert len(evaluate.release_bars(table)) == 1  # no clip measured, no clip bar


def test_the_report_lists_every_bar_and_what_was_missed():
    table = {"gaussian_mild": _row(37.7, 40.4, 41.7, 41.5), "jpeg": _row(34.65, 33.0, 34.65, 34.7)}
    report = dict(table=table, crop=0, images=8, source="folder", presets={}, unsharp_tuned_amounts={},
                  bars=evaluate.release_bars(table))
    text = evaluate.report_markdown(report)
    assert "Release bars (student, ONNX): 1 of 2 met; missed: gaussian_mild." in text
    assert "| gaussian_mild | > tuned unsharp mask | 41.70 | 41.50 | -0.20 | **no** |" in text


def test_each_image_keeps_its_own_score_and_the_mix_averages_its_draws():
    images = [photo_like(48, 64, seed) for seed in range(3)]
    # A restorer that ruins only the second image: its score alone must fall.
    ruined = lambda degraded: np.zeros_like(degraded) if np.array_equal(degraded, images[1]) else degraded
    table = evaluate.evaluate(evaluate.build_pairs(images, 0, ["clean", "webcam"], seed=0), {"student_onnx": ruined})
    clean = table["clean"]["student_onnx"]["per_image_psnr"]
    assert len(clean) == 3 and clean[0] == clean[2] == 100.0 and clean[1] < 20
    mix = table["webcam"]["input"]["per_image_psnr"]
    pairs = evaluate.build_pairs(images, 0, ["webcam"], seed=0)["webcam"]
    first = [psnr(s, d) for d, s in pairs[:evaluate.MIX_DRAWS]]
    assert len(mix) == 3 and abs(mix[0] - np.mean(first)) < 1e-9
    assert abs(np.mean(mix) - table["webcam"]["input"]["psnr"]) < 1e-9


def _row_per_image(input_db, unsharp_db, tuned_db, student_db):
    row = _row(*(float(np.mean(v)) for v in (input_db, unsharp_db, tuned_db, student_db)))
    for name, values in zip(("input", "unsharp", "unsharp_tuned", "student_onnx"), (input_db, unsharp_db, tuned_db, student_db)):
        row[name]["per_image_psnr"] = list(values)
    return row


def test_a_missed_bar_is_traced_to_the_images_that_lose_it_worst_first():
    table = {
        # lost on the page alone: ahead of the tuned mask on both photos
        "gaussian_mild": _row_per_image([37, 30, 25], [40, 33, 28], [41, 34, 31], [41.5, 34.5, 25.5]),
        # held to the input, lost on both images
        "jpeg_mild": _row_per_image([38, 35, 30], [35, 33, 28], [38.9, 35, 30], [37.5, 34.0, 30.0]),
        # met: not listed
        "gaussian": _row_per_image([33, 30, 25], [34, 31, 26], [36, 33, 28], [35, 32, 27]),
        "clean": _row_per_image([100] * 3, [40] * 3, [100] * 3, [39] * 3),
    }
    bars = evaluate.release_bars(table)
    lost = {item["row"]: item for item in evaluate.where_bars_are_lost(table, bars, ["lake", "cat", "page"])}
    assert set(lost) == {"gaussian_mild", "jpeg_mild"}  # the clean floor has no baseline image
    assert [name for name, _ in lost["gaussian_mild"]["images"]] == ["page", "lake", "cat"]
    assert abs(lost["gaussian_mild"]["images"][0][1] + 5.5) < 1e-9
    assert abs(lost["gaussian_mild"]["margin_without_worst"] - 0.5) < 1e-9
    assert [name for name, _ in lost["jpeg_mild"]["images"]] == ["cat", "lake", "page"]  # against the input
    report = dict(table=table, crop=0, images=3, source="folder", presets={}, unsharp_tuned_amounts={},
                  bars=bars, bars_lost=list(lost.values()))
    text = evaluate.report_markdown(report)
    assert "- gaussian_mild: page -5.50, lake +0.50, cat +0.50 (the others: +0.50 on average)" in text
