"""The independent check set, built offline: ``python -m training.independent --out data/independent``.

Photographs from other packages' sample data, never trained on and never used to choose
between designs (the corpus's held-out photos were, round after round, so they flatter
whatever was chosen on them). ``python -m training.evaluate --images data/independent``
scores every one of them, whole, against the same baselines and bars:
- OpenCV's sample photographs, from Debian's ``opencv-doc`` (``apt-get download``,
  ``dpkg-deb -x``, as ``training.corpus`` does): the files named in OPENCV_PHOTOS, which
  are every photograph there at least 512 px on its shorter side, one of each stereo or
  sequence pair, without the painting and the synthetic images;
- matplotlib's portrait of Grace Hopper, read from the installed package: the one human
  face among them, the subject a call is about.
They are old scans and JPEGs whose own softness, grain and blocking would otherwise be
the "sharp" reference, so each is reduced ×``--reduce`` (INTER_AREA), as the corpus
reduces its large photos. Writes one PNG per photo, ``manifest.json`` and ``SOURCES.md``.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from sharpcam.atomic_file import write_atomically
from training import corpus
from training.data import read_image, warn
from training.errors import UsageError, reported_as_exit
from training.options import option, parse_options

OPENCV_PACKAGE = "opencv-doc"
OPENCV_FOLDER = "usr/share/doc/opencv-doc/examples/data"
OPENCV_SOURCE_FOLDER = "samples/data"  # where the copyright file's Files patterns see them
# Left out: aloeR, graf3, leuvenB and ela_modified (the other half of a pair), digits
# (synthetic), starry_night (a painting); the rest of the folder is under 512 px.
OPENCV_PHOTOS = ("aloeL.jpg", "apple.jpg", "baboon.jpg", "building.jpg", "chicky_512.png",
                 "ela_original.jpg", "graf1.png", "leuvenA.jpg", "orange.jpg")
PORTRAIT = "grace_hopper.jpg"
PORTRAIT_LICENCE = "public domain (U.S. Navy official portrait)"


@dataclass
class Options:
    """Build the independent check set (photos never trained on) offline."""
    out: str = option("data/independent", "output folder; score it with "
                                          "`python -m training.evaluate --images OUT`")
    debs: str = option("data/debs", "where .deb files are downloaded (a .deb already there is reused)")
    opencv: bool = option(True, f"include OpenCV's sample photographs (Debian's {OPENCV_PACKAGE})")
    portrait: bool = option(True, "include matplotlib's portrait of Grace Hopper (installed package data)")
    reduce: int = option(2, "reduce every photo by this factor (INTER_AREA), so that its own softness, "
                            "grain and JPEG blocking wash out")


@dataclass
class Source:
    """One photo of the set: where it came from and under which licence."""
    name: str
    path: Path
    source: str
    licence: str
    version: Optional[str] = None


# --- sources ---------------------------------------------------------------------------


def opencv_deb(debs: Path) -> Path:
    """opencv-doc's .deb: the one in --debs, or one `apt-get download` fetches there."""
    instead = f"put {OPENCV_PACKAGE}'s .deb in {debs}, or pass --no-opencv to keep matplotlib's portrait alone"
    if shutil.which("dpkg-deb") is None:
        raise UsageError(f"dpkg-deb not found, so {OPENCV_PACKAGE} cannot be unpacked (Debian and Ubuntu have it); "
                         "pass --no-opencv to keep matplotlib's portrait alone")
    deb = corpus.find_deb(OPENCV_PACKAGE, debs)
    if deb is not None:
        return deb
    if shutil.which("apt-get") is None:
        raise UsageError(f"apt-get not found, so {OPENCV_PACKAGE} cannot be downloaded; {instead}")
    try:
        return corpus.download_deb(OPENCV_PACKAGE, debs)
    except UsageError:
        raise UsageError(f"`apt-get download {OPENCV_PACKAGE}` failed; run `sudo apt-get update` and try again, "
                         f"or {instead}") from None


def opencv_photos(debs: Path, into: Path) -> list[Source]:
    deb = opencv_deb(debs)
    corpus.unpack(deb, into)
    copyright_file = into / "usr/share/doc" / OPENCV_PACKAGE / "copyright"
    dep5 = corpus.parse_dep5(copyright_file.read_text(errors="replace")) if copyright_file.is_file() else None
    version = corpus.deb_field(deb, "Version")
    found = []
    for name in OPENCV_PHOTOS:
        path = into / OPENCV_FOLDER / name
        if not path.is_file():
            warn(f"{OPENCV_PACKAGE} {version} has no {OPENCV_FOLDER}/{name}; left out")
            continue
        licence, _ = corpus.licence_for(f"{OPENCV_SOURCE_FOLDER}/{name}", dep5, OPENCV_PACKAGE, source_path=True)
        found.append(Source(f"opencv__{Path(name).stem}.png", path, f"debian:{OPENCV_PACKAGE}", licence, version))
    if not found:
        raise UsageError(f"{deb.name} holds none of OpenCV's sample photographs under {OPENCV_FOLDER}; "
                         "delete it so that it is downloaded again, or pass --no-opencv")
    return found


def portrait_photo() -> Source:
    try:
        import matplotlib
    except ImportError:
        raise UsageError("matplotlib is not installed, so its portrait cannot be read; "
                         "pip install matplotlib, or pass --no-portrait") from None
    path = Path(matplotlib.get_data_path()) / "sample_data" / PORTRAIT
    if not path.is_file():
        raise UsageError(f"{path} is missing from the installed matplotlib; reinstall it, or pass --no-portrait")
    return Source(f"matplotlib__{Path(PORTRAIT).stem}.png", path,
                  f"matplotlib {matplotlib.__version__} sample data", PORTRAIT_LICENCE)


# --- building ------------------------------------------------------------------------------


def reduced(image: np.ndarray, factor: int) -> np.ndarray:
    h, w = image.shape[:2]
    return cv2.resize(image, (max(1, w // factor), max(1, h // factor)), interpolation=cv2.INTER_AREA)


def sources_md(entries: list[dict], reduce: int) -> str:
    lines = ["# Independent check set", "",
             f"Built by `python -m training.independent`: {len(entries)} photographs from other packages' "
             f"sample data, each reduced ×{reduce}. Never trained on; score them with "
             "`python -m training.evaluate --images` on this folder.", "",
             "| file | source | licence | original | original size | size |", "|---|---|---|---|---|---|"]
    for e in entries:
        lines.append(f"| {e['file']} | {corpus.cell(e['source'])} | {corpus.cell(e['licence'])} | "
                     f"{corpus.cell(e['original_path'])} | {'×'.join(map(str, e['original_size']))} | "
                     f"{'×'.join(map(str, e['size']))} |")
    return "\n".join(lines) + "\n"


def build(opts: Options) -> dict:
    if opts.reduce < 1:
        raise UsageError(f"--reduce {opts.reduce} must be 1 or more (1 keeps the photos as they are)")
    if not (opts.opencv or opts.portrait):
        raise UsageError("--no-opencv and --no-portrait leave nothing to build; keep one of them")
    out = Path(opts.out)
    with tempfile.TemporaryDirectory(prefix="sharpcam-independent-") as unpacked:
        sources = opencv_photos(Path(opts.debs), Path(unpacked)) if opts.opencv else []
        if opts.portrait:
            sources.append(portrait_photo())
        out.mkdir(parents=True, exist_ok=True)
        previous = corpus.previous_files(out)
        entries = []
        for s in sources:
            image = read_image(s.path)
            if image is None:
                raise UsageError(f"{s.path} cannot be decoded; reinstall the package it came from")
            small = corpus.to_uint8(reduced(image, opts.reduce))
            corpus.write_png(out / s.name, small)
            entries.append({"file": s.name, "source": s.source, "package_version": s.version,
                            "original_path": s.path.name, "licence": s.licence,
                            "original_size": [int(image.shape[1]), int(image.shape[0])],
                            "size": [int(small.shape[1]), int(small.shape[0])]})
    # A photo an earlier build wrote and this one did not would still be scored.
    corpus.remove_stale(out, previous, {e["file"] for e in entries})
    manifest = {"built_by": "python -m training.independent", "reduce": opts.reduce, "files": entries}
    write_atomically(out / "manifest.json", (json.dumps(manifest, indent=1) + "\n").encode())
    write_atomically(out / "SOURCES.md", sources_md(entries, opts.reduce).encode())
    print(f"wrote {len(entries)} photos to {out}, reduced ×{opts.reduce}; score them with "
          f"`python -m training.evaluate --images {out} --student sharpcam/assets/student.onnx`", file=sys.stderr)
    return manifest


def main(argv=None) -> dict:
    opts = parse_options(Options, argv, __doc__.splitlines()[0])
    with reported_as_exit():
        return build(opts)


if __name__ == "__main__":
    main()
