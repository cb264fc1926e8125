"""Corpus builder: photo checks, duplicates, DEP-5 licences from a real .deb, the split,
re-run safety and the errors on systems without apt. No network: a download attempt fails."""
import json
import shutil
import subprocess

import cv2
import numpy as np
import pytest

from training import corpus
from training.data import BUILTIN_TRAIN, BUILTIN_VAL, split_names


def fake_photo(w, h, seed):
    """Noise and discs, slightly blurred: texture everywhere, many colours, like a photo."""
    rng = np.random.default_rng(seed)
    image = rng.normal(128, 30, (h, w, 3)).astype(np.float32)
    for _ in range(40):
        centre = (int(rng.integers(w)), int(rng.integers(h)))
        cv2.circle(image, centre, int(rng.integers(10, 120)), rng.uniform(0, 255, 3).tolist(), -1)
    image += rng.normal(0, 15, image.shape).astype(np.float32)
    return np.clip(cv2.GaussianBlur(image, (0, 0), 1.0), 0, 255).astype(np.uint8)


def gradient(w, h):
    ramp = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
    return np.broadcast_to(ramp * np.array([1.0, 0.6, 0.3], np.float32), (h, w, 3)).astype(np.uint8)


def vector_art(w, h):
    """Four flat colours in 8 px cells: plenty of edges, few colours."""
    palette = np.array([[230, 60, 40], [30, 90, 200], [250, 250, 240], [20, 20, 20]], np.uint8)
    cells = np.random.default_rng(3).integers(4, size=(h // 8 + 1, w // 8 + 1))
    return palette[np.kron(cells, np.ones((8, 8), int))[:h, :w]]


def save(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)
    return path


def run(*args):
    return corpus.main([str(a) for a in args])


def by_name(manifest, part):
    return next(e for e in manifest["files"] + manifest["dropped"]
                if part in (e.get("file") or "") or part in (e.get("original_path") or ""))


def test_folder_photos_are_checked_deduplicated_downscaled_and_split(tmp_path):
    src, out = tmp_path / "mine", tmp_path / "out"
    photo = fake_photo(900, 700, 0)
    save(src / "photo.png", photo)
    save(src / "second.jpg", fake_photo(800, 640, 1))
    save(src / "gradient.png", gradient(700, 600))
    save(src / "vector.png", vector_art(700, 600))
    save(src / "photo_small.png", cv2.resize(photo, (720, 560), interpolation=cv2.INTER_AREA))
    save(src / "thumb.png", cv2.resize(photo, (200, 155), interpolation=cv2.INTER_AREA))
    sheet = tmp_path / "sheet.png"
    m = run("--skip-packages", "--no-builtin", "--folder", src, "--out", out, "--max-side", 640,
            "--contact-sheet", sheet)

    kept = {e["file"]: e for e in m["files"]}
    assert set(kept) == {"mine__photo.png", "mine__second.png"}
    entry = kept["mine__photo.png"]
    assert entry["original_size"] == [900, 700] and entry["size"] == [640, 498]
    assert entry["source"] == f"folder:{src}" and entry["licence"] == "user-supplied"
    assert cv2.imread(str(out / "mine__photo.png")).shape == (498, 640, 3)
    assert cv2.imread(str(out / "mine__second.png")).shape == (512, 640, 3)

    reasons = {d["original_path"].rsplit("/", 1)[-1]: d for d in m["dropped"]}
    assert reasons["gradient.png"]["reason"] == "smooth"
    assert reasons["gradient.png"]["gradient"] < corpus.MIN_GRADIENT
    assert reasons["vector.png"]["reason"] == "few colours" and reasons["vector.png"]["colours"] <= 4
    assert reasons["thumb.png"]["reason"] == "too small"
    assert reasons["photo_small.png"]["reason"] == "duplicate"
    assert reasons["photo_small.png"]["detail"].startswith(f"near-duplicate of {src / 'photo.png'}")

    _, val = split_names(list(kept), 0.15)
    assert sorted(f for f, e in kept.items() if e["split"] == "val") == val and len(val) == 1
    assert json.loads((out / "manifest.json").read_text()) == m
    assert "mine__photo.png" in (out / "SOURCES.md").read_text()
    assert cv2.imread(str(sheet)) is not None
    with pytest.raises(SystemExit, match="inside --out"):
        run("--skip-packages", "--no-builtin", "--folder", src, "--out", out, "--contact-sheet", out / "s.png")


COPYRIGHT = """\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: fakewalls

Files: *
Copyright: 2020 Upstream Authors
License: GPL-2+

Files: x/photo.jpg
Copyright: 2021 A. Photographer
           2022 B. Editor
License: CC-BY-4.0

License: GPL-2+
 The GPL text.

License: CC-BY-4.0
 The CC text.
"""


def pack_deb(root, debs, package, version, copyright_text):
    """Package the files under `root` as PACKAGE_VERSION_all.deb in `debs`, with a DEP-5
    copyright file, as Debian ships them."""
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is not installed (Debian/Ubuntu only)")
    doc = root / "usr/share/doc" / package
    doc.mkdir(parents=True, exist_ok=True)
    (doc / "copyright").write_text(copyright_text)
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN/control").write_text(f"Package: {package}\nVersion: {version}\nArchitecture: all\n"
                                         "Maintainer: Test <t@example.org>\nDescription: test package\n")
    debs.mkdir()
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(root), str(debs / f"{package}_{version}_all.deb")],
                   check=True, capture_output=True)


def build_deb(tmp_path, debs):
    root = tmp_path / "pkg"
    walls = root / "usr/share/backgrounds/x"
    save(walls / "photo.jpg", fake_photo(800, 600, 5))
    save(walls / "other.png", fake_photo(700, 560, 6))
    save(walls / "gradient.png", gradient(800, 600))
    (walls / "logo.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')
    pack_deb(root, debs, "fakewalls", "1.0-1", COPYRIGHT)


def test_debian_package_licences_come_from_the_matching_dep5_stanza(tmp_path, monkeypatch):
    debs, out = tmp_path / "debs", tmp_path / "out"
    build_deb(tmp_path, debs)

    def no_download(package, folder):
        raise AssertionError(f"downloaded {package} although its .deb is in --debs")
    monkeypatch.setattr(corpus, "download_deb", no_download)
    which = shutil.which
    monkeypatch.setattr(corpus.shutil, "which", lambda name: None if name == "apt-get" else which(name))
    m = run("--packages", "fakewalls", "--debs", debs, "--no-builtin", "--out", out)

    photo, other = by_name(m, "fakewalls__photo.png"), by_name(m, "fakewalls__other.png")
    assert photo["licence"] == "CC-BY-4.0" and photo["copyright"] == "2021 A. Photographer; 2022 B. Editor"
    assert other["licence"] == "GPL-2+" and other["copyright"] == "2020 Upstream Authors"
    assert photo["source"] == "debian:fakewalls" and photo["package_version"] == "1.0-1"
    assert photo["original_path"] == "usr/share/backgrounds/x/photo.jpg"
    assert by_name(m, "logo.svg")["reason"] == "not raster"
    assert by_name(m, "gradient.png")["reason"] == "smooth"
    assert len(m["files"]) == 2 and (out / "manifest.json").is_file()
    sources = (out / "SOURCES.md").read_text()
    assert "fakewalls__photo.png" in sources and "fakewalls__other.png" in sources and "logo.svg" in sources


def test_dep5_patterns_match_installed_paths_and_the_last_stanza_wins():
    # lomiri installs the source tree's 16.04/x.jpg as usr/share/backgrounds/x.jpg
    assert corpus.dep5_matches("16.04/x_by_y.jpg", "usr/share/backgrounds/x_by_y.jpg")
    assert corpus.dep5_matches("nature/*.jpg", "usr/share/backgrounds/mate/nature/Aqua.jpg")
    assert not corpus.dep5_matches("debian/*", "usr/share/backgrounds/x.jpg")
    assert not corpus.dep5_matches("po/*.jpg", "usr/share/backgrounds/x.jpg")
    assert not corpus.dep5_matches("a/b.jpg", "usr/share/backgrounds/bb.jpg")
    text = COPYRIGHT + "\nFiles: */photo.jpg\nCopyright: 2023 Later\nLicense: CC0-1.0\n"
    dep5 = corpus.parse_dep5(text)
    assert corpus.licence_for("usr/share/backgrounds/x/photo.jpg", dep5, "fakewalls") == ("CC0-1.0", "2023 Later")
    assert corpus.licence_for("usr/share/x/other.png", dep5, "fakewalls")[0] == "GPL-2+"
    assert corpus.parse_dep5("This package was debianized by someone.\n\nCopyright: me\n") is None
    assert corpus.licence_for("a.jpg", None, "p")[0].startswith("unknown")


def test_a_rerun_removes_only_pngs_its_previous_manifest_listed(tmp_path):
    src, out = tmp_path / "mine", tmp_path / "out"
    save(src / "one.png", fake_photo(600, 520, 0))
    save(src / "two.png", fake_photo(600, 520, 1))
    save(out / "users_own.png", fake_photo(64, 64, 2))
    (out / "notes.txt").write_text("keep me")
    args = ("--skip-packages", "--no-builtin", "--folder", src, "--out", out)
    first = run(*args)
    assert {e["file"] for e in first["files"]} == {"mine__one.png", "mine__two.png"}
    # A manifest never makes a re-run delete outside --out.
    save(tmp_path / "outside.png", fake_photo(64, 64, 3))
    first["files"].append({"file": "../outside.png", "split": "train"})
    (out / "manifest.json").write_text(json.dumps(first))

    (src / "two.png").unlink()
    second = run(*args)
    assert [e["file"] for e in second["files"]] == ["mine__one.png"]
    assert not (out / "mine__two.png").exists() and (out / "mine__one.png").is_file()
    assert (out / "users_own.png").is_file() and (out / "notes.txt").read_text() == "keep me"
    assert (tmp_path / "outside.png").is_file()


def test_split_keeps_builtin_held_out_trains_dead_leaves_and_holds_out_eight():
    def photo(source, rel):
        return corpus.Photo(source, "x", rel, rel)
    photos = ([photo("scikit-image", n) for n in BUILTIN_TRAIN + BUILTIN_VAL]
              + [photo("debian:p", f"usr/share/backgrounds/p{i}.jpg") for i in range(10)]
              + [photo("procedural:dead-leaves", f"{i:04d}") for i in range(3)]
              + [photo("procedural:text-pages", f"t{i:04d}") for i in range(2)])
    for i, p in enumerate(photos):
        p.file = f"f{i:02d}.png"
    corpus.assign_splits(photos, 0.0)
    split = {p.rel: p.split for p in photos}
    assert all(split[n] == "val" for n in BUILTIN_VAL) and all(split[n] == "train" for n in BUILTIN_TRAIN)
    assert all(split[f"{i:04d}"] == "train" for i in range(3))
    assert all(split[f"t{i:04d}"] == "train" for i in range(2))
    assert sum(s == "val" for s in split.values()) == corpus.MIN_HELD_OUT
    # The top-up is deterministic: the next names by hash, whatever the input order.
    again = list(reversed(photos))
    corpus.assign_splits(again, 0.0)
    assert {p.rel: p.split for p in again} == split
    package = [p.file for p in photos if p.source == "debian:p"]
    ranked = sorted(package, key=corpus.hash_rank)
    assert {p.file for p in photos if p.source == "debian:p" and p.split == "val"} == set(ranked[:4])

    small = [photo("debian:p", f"q{i}.jpg") for i in range(6)]
    for i, p in enumerate(small):
        p.file = f"q{i}.png"
    corpus.assign_splits(small, 0.3)
    assert sorted(p.file for p in small if p.split == "val") == split_names([p.file for p in small], 0.3)[1]


def test_builtin_photos_keep_their_split_and_dead_leaves_are_seeded(tmp_path):
    m = run("--skip-packages", "--out", tmp_path / "a", "--max-side", 96, "--dead-leaves", 2)
    builtin = [e for e in m["files"] if e["source"] == "scikit-image"]
    assert {e["original_path"].rsplit("/", 1)[-1] for e in builtin} == set(BUILTIN_TRAIN + BUILTIN_VAL)
    assert {e["original_path"].rsplit("/", 1)[-1] for e in builtin if e["split"] == "val"} == set(BUILTIN_VAL)
    assert all(e["licence"] and e["package_version"] and max(e["size"]) <= 96 for e in builtin)
    assert "CC0" in by_name(m, "skimage__chelsea.png")["licence"]
    leaves = [e for e in m["files"] if e["source"] == "procedural:dead-leaves"]
    assert [e["file"] for e in leaves] == ["dead-leaves__0000.png", "dead-leaves__0001.png"]
    assert all(e["split"] == "train" and e["licence"] == "generated" and e["size"] == [96, 96] for e in leaves)

    run("--skip-packages", "--no-builtin", "--out", tmp_path / "b", "--max-side", 96, "--dead-leaves", 1)
    run("--skip-packages", "--no-builtin", "--out", tmp_path / "c", "--max-side", 96, "--dead-leaves", 1,
        "--seed", 1)
    first = (tmp_path / "a/dead-leaves__0000.png").read_bytes()
    assert (tmp_path / "b/dead-leaves__0000.png").read_bytes() == first
    assert (tmp_path / "c/dead-leaves__0000.png").read_bytes() != first


def test_text_pages_are_trained_on_seeded_and_full_of_fine_strokes(tmp_path):
    m = run("--skip-packages", "--no-builtin", "--out", tmp_path / "a", "--max-side", 128, "--text-pages", 2,
            "--dead-leaves", 1)
    pages = [e for e in m["files"] if e["source"] == "procedural:text-pages"]
    assert [e["file"] for e in pages] == ["text-pages__0000.png", "text-pages__0001.png"]
    assert all(e["split"] == "train" and e["licence"] == "generated" and e["size"] == [128, 128] for e in pages)
    # Adding pages leaves the dead leaves as they were (each kind has its own random stream).
    run("--skip-packages", "--no-builtin", "--out", tmp_path / "b", "--max-side", 128, "--dead-leaves", 1)
    assert (tmp_path / "a/dead-leaves__0000.png").read_bytes() == (tmp_path / "b/dead-leaves__0000.png").read_bytes()

    page = corpus.text_page(256, np.random.default_rng(0))
    assert page.shape == (256, 256, 3) and page.dtype == np.uint8
    assert np.array_equal(page, corpus.text_page(256, np.random.default_rng(0)))
    assert not np.array_equal(page, corpus.text_page(256, np.random.default_rng(1)))
    # Text: flat ground under strokes a pixel or two wide, with the contrast of ink on paper.
    grey = page.mean(axis=2)
    steps = np.abs(np.diff(grey, axis=1))
    assert np.median(steps) < 2 and np.percentile(steps, 99) > 60


def test_without_apt_the_error_says_what_to_pass_instead(tmp_path, monkeypatch):
    which = shutil.which
    monkeypatch.setattr(corpus.shutil, "which", lambda name: None if name == "apt-get" else which(name))
    with pytest.raises(SystemExit) as e:
        run("--packages", "fakewalls", "--debs", tmp_path / "debs", "--out", tmp_path / "out")
    message = str(e.value.code)
    assert message.startswith("error: ") and "\n" not in message
    assert "apt-get" in message and "--skip-packages" in message and "--folder" in message and "--data" in message

    monkeypatch.setattr(corpus.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit, match="dpkg-deb not found.*--skip-packages"):
        run("--packages", "fakewalls", "--debs", tmp_path / "debs", "--out", tmp_path / "out")
    assert not (tmp_path / "out").exists()

    with pytest.raises(SystemExit, match="--folder was given more than once"):
        run("--skip-packages", "--folder", tmp_path, "--folder", tmp_path, "--out", tmp_path / "out")


def test_exclude_patterns_match_source_and_path():
    photo = corpus.Photo("debian:gnome-backgrounds", "gnome-backgrounds", "usr/share/backgrounds/gnome/grid-d.webp",
                         "usr/share/backgrounds/gnome/grid-d.webp")
    assert corpus.excluded_by(photo, corpus.DEFAULT_EXCLUDE) == "gnome-backgrounds/*/grid-*"
    photo.short = "mate-backgrounds"
    assert corpus.excluded_by(photo, corpus.DEFAULT_EXCLUDE) is None
