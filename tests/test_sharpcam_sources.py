"""Sources: the demo is deterministic and moves; files loop; a missing camera says what to do."""
import cv2
import numpy as np
import pytest

from sharpcam.sources import CameraSource, DemoSource, SourceError, VideoFileSource


def test_demo_is_deterministic_per_seed_and_moves():
    with DemoSource(width=160, height=96, seed=1) as a, DemoSource(width=160, height=96, seed=1) as b:
        fa = [a.read() for _ in range(31)]
        fb = [b.read() for _ in range(31)]
    assert all(np.array_equal(x, y) for x, y in zip(fa, fb))
    assert fa[0].shape == (96, 160, 3) and fa[0].dtype == np.uint8
    assert np.abs(fa[0].astype(int) - fa[30]).mean() > 1  # one second later the view has moved
    with DemoSource(width=160, height=96, seed=2) as c:
        assert not np.array_equal(c.read(), fa[0])


def test_demo_is_degraded():
    demo = DemoSource(width=320, height=180, blur_sigma=0, jpeg_quality=100, noise_sigma=0, scale=1.0)
    with demo:
        clean = demo.read()
    with DemoSource(width=320, height=180) as degraded:
        soft = degraded.read()

    def detail(img):
        return cv2.Laplacian(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var()
    assert detail(soft) < detail(clean)


def test_file_source_ends_or_loops(tmp_path):
    path = tmp_path / "c.avi"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 24))
    for k in range(3):
        w.write(np.full((24, 32, 3), 40 * k, np.uint8))
    w.release()
    with VideoFileSource(str(path)) as once:
        assert (once.width, once.height, once.frame_count) == (32, 24, 3)
        count = 0
        while once.read() is not None:
            count += 1
        assert count == 3
    with VideoFileSource(str(path), loop=True) as looped:
        frames = [looped.read() for _ in range(7)]
    assert all(f is not None for f in frames)


def test_missing_camera_names_the_way_out():
    with pytest.raises(SourceError) as exc:
        CameraSource(97).open()
    assert "--list-cameras" in str(exc.value) and "--demo" in str(exc.value)
