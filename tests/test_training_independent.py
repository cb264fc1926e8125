"""The independent check set: OpenCV's listed sample photographs from a real .deb and
matplotlib's portrait, reduced, with their licences; re-runs and a missing apt. No network."""
import json
import shutil

import cv2
import matplotlib
import pytest

from test_training_corpus import fake_photo, pack_deb, save
from training import independent

COPYRIGHT = """\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: OpenCV

Files: *
Copyright: 2000-2022 OpenCV authors
License: Apache-2.0 AND BSD-3-Clause

Files: data/*
Copyright: 2000 Intel Corporation
License: BSD-3-Clause
"""


def build_opencv_doc(tmp_path, debs):
    root = tmp_path / "pkg"
    data = root / independent.OPENCV_FOLDER
    save(data / "apple.jpg", fake_photo(512, 512, 1))
    save(data / "graf1.png", fake_photo(800, 640, 2))
    save(data / "graf3.png", fake_photo(800, 640, 3))         # the other half of a pair
    save(data / "starry_night.jpg", fake_photo(752, 600, 4))  # a painting
    pack_deb(root, debs, "opencv-doc", "4.6.0-1", COPYRIGHT)


@pytest.fixture
def portrait(tmp_path, monkeypatch):
    """matplotlib's data folder, with a stand-in portrait of 512×600."""
    folder = tmp_path / "mpl-data"
    save(folder / "sample_data" / independent.PORTRAIT, fake_photo(512, 600, 7))
    monkeypatch.setattr(matplotlib, "get_data_path", lambda: str(folder))
    return folder


def run(*args):
    return independent.main([str(a) for a in args])


def test_the_set_is_the_listed_photos_and_the_portrait_halved_with_their_licences(tmp_path, portrait, capsys):
    debs, out = tmp_path / "debs", tmp_path / "out"
    build_opencv_doc(tmp_path, debs)
    manifest = run("--debs", debs, "--out", out)

    files = {e["file"]: e for e in manifest["files"]}
    assert sorted(files) == ["matplotlib__grace_hopper.png", "opencv__apple.png", "opencv__graf1.png"]
    assert files["opencv__graf1.png"]["size"] == [400, 320] and files["opencv__apple.png"]["size"] == [256, 256]
    assert cv2.imread(str(out / "matplotlib__grace_hopper.png")).shape == (300, 256, 3)
    # samples/data/apple.jpg is under "Files: *", not the top-level "data/*" (the Haar cascades).
    assert files["opencv__apple.png"]["licence"] == "Apache-2.0 AND BSD-3-Clause"
    assert files["opencv__apple.png"]["package_version"] == "4.6.0-1"
    assert files["matplotlib__grace_hopper.png"]["licence"] == independent.PORTRAIT_LICENCE
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert "opencv__graf1.png" in (out / "SOURCES.md").read_text()
    # Listed photos this package version lacks are named, not silently missing.
    assert "has no usr/share/doc/opencv-doc/examples/data/baboon.jpg" in capsys.readouterr().err


def test_a_rerun_without_opencv_leaves_only_the_portrait_to_score(tmp_path, portrait):
    debs, out = tmp_path / "debs", tmp_path / "out"
    build_opencv_doc(tmp_path, debs)
    run("--debs", debs, "--out", out)
    save(out / "mine.png", fake_photo(64, 64, 0))  # not this command's: never removed
    run("--debs", debs, "--out", out, "--no-opencv")
    assert sorted(p.name for p in out.glob("*.png")) == ["matplotlib__grace_hopper.png", "mine.png"]


def test_without_apt_the_error_says_what_to_pass_instead(tmp_path, portrait, monkeypatch):
    which = shutil.which
    monkeypatch.setattr(independent.shutil, "which", lambda name: None if name == "apt-get" else which(name))
    with pytest.raises(SystemExit) as stop:
        run("--debs", tmp_path / "debs", "--out", tmp_path / "out")
    message = str(stop.value.code)
    assert message.startswith("error: ") and "\n" not in message
    assert "apt-get not found" in message and "--no-opencv" in message
    assert not (tmp_path / "out").exists()

    with pytest.raises(SystemExit, match="leave nothing to build"):
        run("--no-opencv", "--no-portrait", "--out", tmp_path / "out")
