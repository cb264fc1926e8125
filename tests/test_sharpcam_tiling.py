"""Tiled inference must equal whole-frame inference, for any frame size."""
import numpy as np
import pytest

from conftest import FakeClock
from sharpcam.tiling import Tiler


def run(engine, tiler, frame):
    return tiler.from_batch(engine.run(tiler.to_batch(frame))).copy()


def make(engine, h, w, tile, **kw):
    kw.setdefault("receptive_radius", engine.receptive_radius)
    kw.setdefault("size_multiple", engine.size_multiple)
    return Tiler(h, w, tile=tile, **kw)


@pytest.mark.parametrize("h,w", [(64, 64), (100, 130), (256, 256), (241, 397), (10, 7), (480, 640)])
@pytest.mark.parametrize("tile", [32, 64, 256])
def test_tiled_equals_whole_frame(engine, h, w, tile):
    frame = np.random.default_rng(h * 1000 + w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    whole = run(engine, make(engine, h, w, 0), frame)
    tiled = run(engine, make(engine, h, w, tile), frame)
    assert whole.shape == tiled.shape == (3, h, w)
    assert np.abs(whole - tiled).max() <= 1 / 255


def test_without_margin_tiles_show_seams(engine):
    # Guards the test above: the test model must be sensitive to missing context.
    frame = np.random.default_rng(3).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    whole = run(engine, make(engine, 128, 128, 0), frame)
    seamy = run(engine, make(engine, 128, 128, 32, receptive_radius=0), frame)
    assert np.abs(whole - seamy).max() > 1 / 255


def test_unaligned_windows_differ(engine):
    # Why origins must sit on the size_multiple grid: shifting a window by 2 px changes the result.
    frame = np.random.default_rng(4).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    t = make(engine, 96, 96, 0)
    batch = t.to_batch(frame)
    full = engine.run(batch)
    shifted = engine.run(np.ascontiguousarray(batch[:, :, 2:-2, 2:-2]))
    assert np.abs(full[:, :, 2:-2, 2:-2][..., 20:-20, 20:-20] - shifted[..., 20:-20, 20:-20]).max() > 1 / 255


def test_tiles_run_as_one_aligned_batch(engine):
    t = make(engine, 720, 1280, 256)
    n, c, h, w = t.batch_shape
    assert (n, c) == (3 * 5, 3)
    assert h == w == 256 + 2 * t.margin
    assert t.margin >= engine.receptive_radius and t.margin % engine.size_multiple == 0
    assert all(y % engine.size_multiple == 0 and x % engine.size_multiple == 0 for y, x in t.origins)
    frame = np.zeros((720, 1280, 3), np.uint8)
    assert t.to_batch(frame).shape == t.batch_shape


def test_tile_rounds_to_size_multiple():
    t = Tiler(1000, 1000, tile=50, receptive_radius=100, size_multiple=32)
    assert t.tile == 64 and t.margin == 128
    assert t.window == (64 + 256, 64 + 256)


def test_windows_never_exceed_the_canvas():
    t = Tiler(100, 130, tile=64, receptive_radius=100, size_multiple=32)
    assert t.canvas_shape == (128, 160) and t.window == (128, 160)


@pytest.mark.parametrize("h,w,multiple", [(720, 1280, 16), (480, 640, 32), (1080, 1920, 8)])
def test_whole_frame_costs_no_more_than_the_frame(h, w, multiple):
    # Whole-frame inference needs no context margin: the canvas edge is the frame edge.
    t = Tiler(h, w, tile=0, receptive_radius=115, size_multiple=multiple)
    assert t.work_ratio == 1.0


def test_batch_is_rgb_scaled_to_unit_range():
    frame = np.zeros((8, 8, 3), np.uint8)
    frame[..., 0] = 255  # blue in BGR
    t = Tiler(8, 8, tile=0, receptive_radius=0, size_multiple=1)
    batch = t.to_batch(frame)
    assert batch.dtype == np.float32
    assert np.all(batch[0, 2] == 1.0) and np.all(batch[0, :2] == 0.0)


def test_wrong_frame_size_is_rejected():
    t = Tiler(8, 8, tile=0, receptive_radius=0, size_multiple=1)
    with pytest.raises(ValueError):
        t.to_batch(np.zeros((9, 8, 3), np.uint8))


def test_smallest_useful_tile_is_twice_the_margin():
    from sharpcam.tiling import min_useful_tile, tile_problem
    # The bundled student: radius 115, multiple 16 -> margin 128 on each side.
    assert min_useful_tile(115, 16) == 256
    assert tile_problem(256, 115, 16) is None and tile_problem(0, 115, 16) is None
    assert tile_problem(250, 115, 16) is None  # rounds up to 256
    problem = tile_problem(7, 115, 16)
    assert "289x" in problem and "--tile 256" in problem
    assert min_useful_tile(0, 8) == 8 and tile_problem(8, 0, 8) is None


class TimedEngine:
    """Takes ``whole_ms`` for a whole-frame batch and ``tiles_ms`` for a batch of tiles, on
    a fake clock: what --tile auto measures, without timing anything real."""
    receptive_radius, size_multiple, last_ms = 12, 4, 0.0
    reads_whole_frame = False

    def __init__(self, clock, whole_ms, tiles_ms):
        self.clock, self.whole_ms, self.tiles_ms = clock, whole_ms, tiles_ms

    def run(self, batch):
        self.last_ms = self.whole_ms if batch.shape[0] == 1 else self.tiles_ms
        self.clock.t += self.last_ms / 1000.0
        return batch


@pytest.mark.parametrize("whole_ms,tiles_ms,chosen,named", [
    (40.0, 25.0, 256, "tile 256"),       # a GPU that prefers small batches of tiles
    (25.0, 40.0, 0, "whole frame"),      # a CPU, where the whole frame wins
])
def test_tile_auto_keeps_the_faster_of_tiles_and_whole_frame(whole_ms, tiles_ms, chosen, named):
    from sharpcam.sharpen import Sharpener
    clock = FakeClock()
    sharpener = Sharpener(TimedEngine(clock, whole_ms, tiles_ms), tile=None, clock=clock)
    tiler = sharpener.tiler(300, 520)  # 2x3 tiles of 256: both candidates are measured
    assert sharpener.tile == chosen and tiler.tile == chosen
    assert sharpener.choice_note == (f"auto tiling: tile 256 {tiles_ms:.1f} ms, "
                                     f"whole frame {whole_ms:.1f} ms -> {named}")
