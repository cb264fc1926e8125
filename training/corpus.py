"""Build a real-photo training corpus offline: ``python -m training.corpus --out data/photos``.

This file owns everything about assembling ``--data`` folders from sources a user can get
without a browser:
- Debian wallpaper packages (``apt-get download``, unpacked with ``dpkg-deb -x``), with each
  file's licence read from the package's DEP-5 ``copyright`` file;
- scikit-image's bundled photographs, read from the installed package, keeping the split
  of ``training.data`` (BUILTIN_VAL stays held out);
- the user's own photo folders (``--folder``);
- optional procedural images: dead leaves (``--dead-leaves N``) and pages of rendered
  text (``--text-pages N``), always trained on, never held out.

Package and folder images are checked before they are kept: thumbnails, smooth gradients,
vector art and flat renders are dropped (thresholds below, calibrated by eye on a contact
sheet of the five default packages), near-duplicates are dropped, and what remains is
downscaled with INTER_AREA to at most ``--max-side`` pixels so its own noise and blur wash
out. ``--out`` receives the PNGs, ``manifest.json`` (whose ``split`` field is authoritative:
``training.data`` honours it) and ``SOURCES.md``; every dropped file is listed with its
reason and measurements. Re-running is safe: PNGs are replaced atomically and only PNGs that
the previous manifest listed and the new one does not are removed.
"""
from __future__ import annotations

import fnmatch
import hashlib
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import skimage
import skimage.data

from sharpcam.atomic_file import write_atomically
from training.data import BUILTIN_TRAIN, BUILTIN_VAL, builtin_dir, list_images, read_image, split_names, warn
from training.errors import UsageError, reported_as_exit
from training.options import option, parse_options
from training.text_pages import text_page

DEFAULT_PACKAGES = ["mate-backgrounds", "ukui-wallpapers", "lomiri-wallpapers-16.04",
                    "lomiri-wallpapers-20.04", "gnome-backgrounds"]
RASTER = (".jpg", ".jpeg", ".png", ".webp")
VECTOR = (".svg", ".svgz")

# Thresholds, calibrated on a contact sheet of all 77 raster files of the five default
# packages (30 photographs; 47 gradients, vector art and renders; `--contact-sheet` draws
# one). Gradient and flatness are measured on a copy at most 1280 px on the long side, so
# they do not depend on the source resolution. The comments give the values seen.
MIN_SIDE = 512             # thumbnails and icons (gnome's 256 px vnc-*.webp)
MIN_GRADIENT = 1.8         # mean |Sobel| of grey at 512 px, grey levels/px: photos >= 1.97, gradients <= 1.73
MIN_COLOURS = 256          # distinct 5-bit RGB colours in a 256x256 sample: photos >= 348, vector art <= 173
MIN_GREY_LEVELS = 120      # the same for greyscale images, 8-bit levels: grey photos 142-256, a stripes render 94
MAX_FLAT = 0.6             # pixels whose 3x3 neighbourhood spans <= 1 grey level: photos <= 0.51, renders >= 0.73
DUPLICATE_DISTANCE = 0.15  # mean |diff| of normalised 16x16 grey thumbnails: same photo <= 0.01,
                           # colour variants of one render 0.08-0.1, distinct images >= 0.33
MEASURE_SIDE = 1280

# Renders that pass every detector (tiled 3-D patterns, a ribbon render): judged by eye on the
# contact sheet. Patterns match "SOURCE/PATH", SOURCE being the package or folder name.
DEFAULT_EXCLUDE = ["gnome-backgrounds/*/grid-*", "gnome-backgrounds/*/licorice-*",
                   "gnome-backgrounds/*/pixels-*", "gnome-backgrounds/*/truchet-*",
                   "mate-backgrounds/*/Float-into-MATE.png", "ukui-wallpapers/*/string.jpg"]

# Evaluation needs whole held-out photos; a hash split of a small corpus can give too few.
MIN_HELD_OUT = 8
MIN_PHOTOS_FOR_HELD_OUT = 20
PROCEDURAL_SIDE = 768

NO_APT = ("on systems without apt (Windows, macOS) pass --skip-packages and add your own photos with "
          "--folder DIR, or train on a photo folder directly with --data DIR")


@dataclass
class Options:
    """Assemble a real-photo training corpus (PNGs + manifest.json + SOURCES.md) offline."""
    out: str = option("data/photos", "output folder; pass it to training as --data")
    packages: list[str] = option(DEFAULT_PACKAGES, "Debian wallpaper packages to take photos from", nargs="*")
    debs: str = option("data/debs", "where .deb files are downloaded (a .deb already there is reused)")
    skip_packages: bool = option(False, "use no Debian packages (systems without apt-get/dpkg-deb)")
    builtin: bool = option(True, "include scikit-image's bundled photographs (chelsea, coffee, camera, page held out)")
    folder: Optional[list[str]] = option(None, "your own photo folders (give the flag once: --folder A B)")
    dead_leaves: int = option(0, "add N procedural dead-leaves images (overlapping discs, power-law radii; train only)")
    text_pages: int = option(0, "add N procedural pages of rendered text (OpenCV's stroke fonts, many sizes; "
                                "train only)")
    seed: int = option(0, "seed of the procedural images")
    max_side: int = option(1280, "downscale (INTER_AREA, never up) to at most this many pixels on the long side")
    val_fraction: float = option(0.15, "held-out fraction of package and folder photos (by name hash)")
    exclude: list[str] = option(DEFAULT_EXCLUDE, "drop files matching these SOURCE/PATH globs (pass none to "
                                "exclude nothing)", nargs="*")
    contact_sheet: Optional[str] = option(None, "also write a contact sheet of kept and dropped files to this PNG "
                                          "(outside --out)")


@dataclass
class Photo:
    """One image on its way into the corpus, or out of it with a reason."""
    source: str                      # "debian:PKG", "scikit-image", "folder:PATH"
    short: str                       # file-name prefix and --exclude key
    rel: str                         # path inside the package or folder
    original_path: str
    path: Optional[Path] = None
    licence: str = ""
    copyright: Optional[str] = None
    package_version: Optional[str] = None
    curated: bool = False            # scikit-image's chosen photos skip the photo checks
    rank: int = 0                    # earlier sources win duplicates
    reason: Optional[str] = None
    detail: str = ""
    measures: dict = field(default_factory=dict)
    original_size: Optional[list] = None
    image: Optional[np.ndarray] = None    # uint8 RGB at the corpus scale
    thumb: Optional[np.ndarray] = None    # normalised 16x16 grey, for duplicates
    preview: Optional[np.ndarray] = None  # for the contact sheet
    file: Optional[str] = None
    split: Optional[str] = None


# --- Debian packages ---------------------------------------------------------------------


def find_deb(package: str, debs: Path) -> Optional[Path]:
    found = sorted(debs.glob(f"{package}_*.deb"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def download_deb(package: str, debs: Path) -> Path:
    debs.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["apt-get", "download", package], cwd=debs, capture_output=True, text=True)
    deb = find_deb(package, debs)
    if done.returncode != 0 or deb is None:
        said = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        raise UsageError(f"`apt-get download {package}` failed ({said[-1] if said else 'no .deb'}); "
                         f"check the name (`apt-cache policy {package}`), run `sudo apt-get update`, "
                         "or leave it out with --packages ... / --skip-packages")
    return deb


def require_tools(packages: list[str], debs: Path) -> None:
    if shutil.which("dpkg-deb") is None:
        raise UsageError(f"dpkg-deb not found, so Debian packages cannot be unpacked; {NO_APT}")
    missing = [p for p in packages if find_deb(p, debs) is None]
    if missing and shutil.which("apt-get") is None:
        raise UsageError(f"apt-get not found and {debs} has no .deb for {', '.join(missing)}; "
                         f"put the .deb files there, or {NO_APT}")


def deb_field(deb: Path, name: str) -> Optional[str]:
    done = subprocess.run(["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True)
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def unpack(deb: Path, into: Path) -> None:
    done = subprocess.run(["dpkg-deb", "-x", str(deb), str(into)], capture_output=True, text=True)
    if done.returncode != 0:
        raise UsageError(f"dpkg-deb cannot unpack {deb} ({done.stderr.strip()[:200]}); "
                         "delete it so that it is downloaded again")


def parse_dep5(text: str) -> Optional[tuple[dict, list[dict]]]:
    """(header, Files stanzas) of a machine-readable copyright file, or None for free text."""
    paragraphs, current, key = [], {}, None
    for line in text.splitlines() + [""]:
        if not line.strip():
            if current:
                paragraphs.append(current)
            current, key = {}, None
        elif line[0] in " \t" and key:
            current[key] += "\n" + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip().lower()
            current[key] = value.strip()
    if not paragraphs or not re.search(r"copyright-format|dep5", paragraphs[0].get("format", "")):
        return None
    return paragraphs[0], [p for p in paragraphs if "files" in p]


def dep5_regex(pattern: str) -> re.Pattern:
    # DEP-5 globs: * and ? match any characters including "/", backslash escapes; no [].
    out, i = [], 0
    while i < len(pattern):
        if pattern[i] == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append({"*": ".*", "?": "."}.get(pattern[i], re.escape(pattern[i])))
        i += 1
    return re.compile("".join(out) + r"\Z", re.S)


def dep5_matches(pattern: str, path: str) -> bool:
    """Does a Files pattern (a path in the source tree) name this installed file?

    Packages install files under another prefix (usr/share/backgrounds/...), and some
    flatten the tree (lomiri's 16.04/x.jpg becomes usr/share/backgrounds/x.jpg), so the
    pattern may match any tail of the path, or, when its file-name part starts with a
    literal, the file name alone."""
    pattern = pattern.removeprefix("./")
    parts = path.split("/")
    if any(dep5_regex(pattern).match("/".join(parts[i:])) for i in range(len(parts))):
        return True
    head, _, name = pattern.rpartition("/")
    return bool(head) and not name.startswith(("*", "?")) and bool(dep5_regex(name).match(parts[-1]))


def licence_for(path: str, dep5: Optional[tuple[dict, list[dict]]], package: str,
                source_path: bool = False) -> tuple[str, Optional[str]]:
    """(licence, copyright) of an installed file: the last matching Files stanza wins (DEP-5).
    With `source_path` the path is the file's own in the source tree, matched whole: the
    installed-path match, which also tries every tail, would read samples/data/x.jpg as a
    top-level data/*."""
    where = f"usr/share/doc/{package}/copyright"
    if dep5 is None:
        return f"unknown (not machine-readable; see {where})", None
    header, stanzas = dep5

    def matches(pattern: str) -> bool:
        if source_path:
            return bool(dep5_regex(pattern.removeprefix("./")).match(path))
        return dep5_matches(pattern, path)
    match = None
    for stanza in stanzas:
        if any(matches(p) for p in stanza["files"].split()):
            match = stanza
    # The first line of a License field is the short name; the rest is the text.
    if match is None:
        licence = header.get("license", "").split("\n")[0]
        return licence or f"unknown (no Files stanza matches; see {where})", header.get("copyright")
    copyright_ = "; ".join(line for line in match.get("copyright", "").splitlines() if line) or None
    return match.get("license", "").split("\n")[0] or f"unknown (see {where})", copyright_


def package_photos(package: str, root: Path, version: Optional[str], rank: int) -> list[Photo]:
    copyright_file = root / "usr/share/doc" / package / "copyright"
    dep5 = parse_dep5(copyright_file.read_text(errors="replace")) if copyright_file.is_file() else None
    photos = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        suffix = path.suffix.lower()
        if suffix not in RASTER + VECTOR:
            continue
        rel = path.relative_to(root).as_posix()
        licence, copyright_ = licence_for(rel, dep5, package)
        photo = Photo(f"debian:{package}", package, rel, rel, path, licence, copyright_, version, rank=rank)
        if suffix in VECTOR:
            photo.reason, photo.detail = "not raster", "SVG is vector art, not a photograph"
        photos.append(photo)
    return photos


# --- scikit-image and folders -------------------------------------------------------------


def builtin_licences() -> dict[str, str]:
    """Licence sentences from the docstrings of skimage.data's loaders, by file name (its
    data README lists no licences; the loaders' docstrings do)."""
    notes: dict[str, str] = {}
    for name in dir(skimage.data):
        loader = getattr(skimage.data, name, None)
        if not inspect.isfunction(loader):
            continue
        try:
            source, doc = inspect.getsource(loader), inspect.getdoc(loader) or ""
        except (OSError, TypeError):
            continue
        # Only the summary and Notes sections: References carry words like "Public Domain" too.
        sections = re.split(r"\n(\w[\w ]*)\n-{3,}\n", doc)
        text = " ".join([sections[0]] + [body for head, body in zip(sections[1::2], sections[2::2])
                                         if head == "Notes"])
        sentences = [s for s in re.split(r"(?<=\.)\s+", " ".join(text.split()))
                     if re.search(r"CC0|CC-0|public domain|copyright|licen", s, re.I)]
        for file in re.findall(r"data/([\w.-]+\.(?:png|jpg))", source):
            if sentences:
                notes.setdefault(file, " ".join(sentences[:2]))
    return notes


def builtin_photos() -> list[Photo]:
    folder, notes = builtin_dir(), builtin_licences()
    photos = []
    for name in BUILTIN_TRAIN + BUILTIN_VAL:
        if (folder / name).is_file():
            licence = notes.get(name, "see scikit-image data README")
            photos.append(Photo("scikit-image", "skimage", name, f"skimage/data/{name}", folder / name,
                                licence, None, skimage.__version__, curated=True))
    return photos


def safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:80] or "image"


def folder_photos(folder: str, rank: int) -> list[Photo]:
    root = Path(folder)
    short = safe(root.resolve().name)
    return [Photo(f"folder:{folder}", short, p.relative_to(root).as_posix(), str(p), p, "user-supplied",
                  rank=rank) for p in list_images(root)]


# --- measuring and checking ---------------------------------------------------------------


def resize_to(image: np.ndarray, side: int) -> np.ndarray:
    h, w = image.shape[:2]
    if max(h, w) <= side:
        return image
    scale = side / max(h, w)
    size = (side, max(1, round(h * scale))) if w >= h else (max(1, round(w * scale)), side)
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def to_uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


def measure(image: np.ndarray, sample: np.ndarray) -> dict:
    """Photo-ness of an H×W×3 uint8 RGB image at the corpus scale, and of a 256×256
    nearest-neighbour sample of the original (for colours: any averaging, even the
    downscale to the corpus scale, would blend vector art's few colours into many)."""
    grey512 = cv2.cvtColor(resize_to(image, 512), cv2.COLOR_RGB2GRAY).astype(np.float32)
    # Sobel's gain is 8 on a unit ramp: /8 gives grey levels per pixel.
    gradient = (np.abs(cv2.Sobel(grey512, cv2.CV_32F, 1, 0)) + np.abs(cv2.Sobel(grey512, cv2.CV_32F, 0, 1))).mean() / 8
    grey = float((np.ptp(sample, axis=2) <= 3).mean()) > 0.99
    if grey:
        colours = len(np.unique(sample[..., 1]))
    else:
        q = (sample >> 3).astype(np.int32)
        colours = len(np.unique((q[..., 0] << 10) | (q[..., 1] << 5) | q[..., 2]))
    g = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    kernel = np.ones((3, 3), np.uint8)
    flat = float(((cv2.dilate(g, kernel).astype(np.int16) - cv2.erode(g, kernel)) <= 1).mean())
    return {"gradient": round(float(gradient), 3), "colours": colours, "grey": grey, "flat": round(flat, 3)}


def verdict(size: list, m: dict) -> tuple[Optional[str], str]:
    if min(size) < MIN_SIDE:
        return "too small", f"smaller side {min(size)} px < {MIN_SIDE} (thumbnail or icon)"
    if m["gradient"] < MIN_GRADIENT:
        return "smooth", f"mean gradient {m['gradient']:.2f} < {MIN_GRADIENT} (gradient or blur, not a photo)"
    least = MIN_GREY_LEVELS if m["grey"] else MIN_COLOURS
    if m["colours"] < least:
        what = "grey levels" if m["grey"] else "colours"
        return "few colours", f"{m['colours']} distinct {what} < {least} (vector art)"
    if m["flat"] > MAX_FLAT:
        return "flat", f"{m['flat']:.0%} of pixels in flat areas > {MAX_FLAT:.0%} (vector art or render)"
    return None, ""


def thumbnail(image: np.ndarray) -> np.ndarray:
    t = cv2.resize(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), (16, 16), interpolation=cv2.INTER_AREA)
    t = t.astype(np.float32).ravel()
    return (t - t.mean()) / (t.std() + 1e-3)


def excluded_by(photo: Photo, patterns: list[str]) -> Optional[str]:
    key = f"{photo.short}/{photo.rel}"
    return next((p for p in patterns if fnmatch.fnmatchcase(key, p)), None)


def load(photo: Photo, max_side: int, exclude: list[str]) -> Photo:
    """Decode, measure, check and downscale one photo (in a worker thread)."""
    if photo.reason:
        return photo
    pattern = excluded_by(photo, exclude)
    if pattern:
        photo.reason, photo.detail = "excluded", f"matches --exclude {pattern}"
        return photo
    decoded = read_image(photo.path)
    if decoded is None:
        photo.reason, photo.detail = "unreadable", "cannot be decoded"
        return photo
    h, w = decoded.shape[:2]
    photo.original_size = [w, h]
    # Downscaled in float from the original; the measures are taken at a fixed scale so that
    # --max-side does not move the thresholds.
    work = to_uint8(resize_to(decoded, MEASURE_SIDE))
    photo.image = work if max_side == MEASURE_SIDE else to_uint8(resize_to(decoded, max_side))
    sample = to_uint8(cv2.resize(decoded, (256, 256), interpolation=cv2.INTER_NEAREST))
    del decoded
    photo.preview = resize_to(work, 192)
    photo.measures = {"min_side": min(h, w), **measure(work, sample)}
    photo.thumb = thumbnail(work)
    if not photo.curated:
        photo.reason, photo.detail = verdict(photo.original_size, photo.measures)
    if photo.reason:
        photo.image = None
    return photo


def load_all(photos: list[Photo], max_side: int, exclude: list[str]) -> list[Photo]:
    # OpenCV decodes and resizes outside the GIL; few workers, as a 6000x4000 float image is 290 MB.
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda p: load(p, max_side, exclude), photos))


def drop_duplicates(photos: list[Photo]) -> None:
    """The same photo in two packages or at two resolutions: keep the earlier source, then
    the larger original."""
    kept: list[Photo] = []
    for photo in sorted((p for p in photos if p.reason is None),
                        key=lambda p: (p.rank, -(p.original_size[0] * p.original_size[1]), p.original_path)):
        twin = min(kept, key=lambda k: np.abs(k.thumb - photo.thumb).mean(), default=None)
        distance = float(np.abs(twin.thumb - photo.thumb).mean()) if twin is not None else np.inf
        if distance < DUPLICATE_DISTANCE:
            photo.reason, photo.image = "duplicate", None
            photo.detail = f"near-duplicate of {twin.original_path} ({twin.source})"
            photo.measures["duplicate_distance"] = round(distance, 4)
        else:
            kept.append(photo)


# --- dead leaves ------------------------------------------------------------------------


def dead_leaves(side: int, rng: np.random.Generator) -> np.ndarray:
    """Opaque discs of random colour, later ones on top, radii with density ∝ r⁻³ (scale
    invariant, like natural images), each with a slight linear shading."""
    canvas = np.empty((side, side, 3), np.float32)
    canvas[:] = rng.random(3)
    rmin, rmax = 2.0, side / 4
    # About four layers deep: enough that the background is covered.
    n = int(4 * side * side / (np.pi * 2 * rmin ** 2 * np.log(rmax / rmin)))
    radii = (rmin ** -2 - rng.random(n) * (rmin ** -2 - rmax ** -2)) ** -0.5
    centres = rng.random((n, 2)) * side
    colours = rng.random((n, 3)).astype(np.float32)
    shading = rng.normal(0, 0.08, (n, 2)).astype(np.float32)
    for (cx, cy), r, colour, (sx, sy) in zip(centres, radii, colours, shading):
        x0, x1 = max(0, int(cx - r - 1)), min(side, int(cx + r + 2))
        y0, y1 = max(0, int(cy - r - 1)), min(side, int(cy + r + 2))
        if x0 >= x1 or y0 >= y1:
            continue
        dy, dx = np.ogrid[y0 - cy + 0.5:y1 - cy + 0.5, x0 - cx + 0.5:x1 - cx + 0.5]
        alpha = np.clip(r + 0.5 - np.sqrt(dx * dx + dy * dy), 0, 1)[..., None]  # anti-aliased edge
        fill = colour + ((sx * dx + sy * dy) / r)[..., None]
        patch = canvas[y0:y1, x0:x1]
        patch += alpha * (fill - patch)
    return to_uint8(canvas)


# --- split and output ---------------------------------------------------------------------


def is_procedural(photo: Photo) -> bool:
    return photo.source.startswith("procedural:")


def hash_rank(name: str) -> bytes:
    return hashlib.sha256(name.replace(os.sep, "/").encode()).digest()


def assign_splits(photos: list[Photo], val_fraction: float) -> None:
    """scikit-image keeps BUILTIN_VAL held out, procedural images are trained on, the rest
    split by name hash (training.data.split_names); then at least MIN_HELD_OUT held out when
    the corpus is big enough, topped up with the next names by hash."""
    hashed = [p for p in photos if p.source != "scikit-image" and not is_procedural(p)]
    _, val = split_names([p.file for p in hashed], val_fraction) if hashed else ([], [])
    val = set(val)
    for p in photos:
        if p.source == "scikit-image":
            p.split = "val" if p.rel in BUILTIN_VAL else "train"
        else:
            p.split = "val" if p.file in val else "train"
    real = [p for p in photos if not is_procedural(p)]
    short = MIN_HELD_OUT - sum(p.split == "val" for p in real)
    if len(real) >= MIN_PHOTOS_FOR_HELD_OUT and short > 0:
        for p in sorted((p for p in hashed if p.split == "train"), key=lambda p: hash_rank(p.file))[:short]:
            p.split = "val"


def name_files(photos: list[Photo]) -> None:
    taken: set[str] = set()
    for p in sorted(photos, key=lambda p: (p.rank, p.original_path or p.rel)):
        base = f"{p.short}__{safe(Path(p.rel).stem)}"
        name, i = f"{base}.png", 2
        while name.lower() in taken:  # case-insensitive file systems
            name, i = f"{base}-{i}.png", i + 1
        taken.add(name.lower())
        p.file = name


def write_png(path: Path, image: np.ndarray) -> None:
    ok, data = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise UsageError(f"cannot encode {path.name} as PNG")
    write_atomically(path, data.tobytes())


def previous_files(out: Path) -> list[str]:
    """Files the last run wrote (from its manifest): the only ones a re-run may delete."""
    path = out / "manifest.json"
    if not path.is_file():
        return []
    try:
        return [str(e["file"]) for e in json.loads(path.read_text())["files"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        warn(f"{path} is unreadable ({e}); files of the previous run are left in place")
        return []


def remove_stale(out: Path, old: list[str], new: set[str]) -> list[str]:
    removed = []
    for name in old:
        path = out / name
        # Only plain PNGs directly in --out: a manifest never makes us delete anything else.
        if name not in new and Path(name).name == name and name.endswith(".png") and path.is_file():
            path.unlink()
            removed.append(name)
    return removed


def entry(p: Photo) -> dict:
    e = {"file": p.file, "split": p.split, "source": p.source, "package_version": p.package_version,
         "original_path": p.original_path, "licence": p.licence, "copyright": p.copyright,
         "original_size": p.original_size, "size": [int(p.image.shape[1]), int(p.image.shape[0])]}
    if p.measures:
        e["measures"] = p.measures
    return e


def dropped_entry(p: Photo) -> dict:
    return {"original_path": p.original_path, "source": p.source, "reason": p.reason, "detail": p.detail,
            "original_size": p.original_size, **p.measures}


def cell(text) -> str:
    return str("" if text is None else text).replace("|", "\\|").replace("\n", " ")


def sources_md(manifest: dict) -> str:
    files, dropped = manifest["files"], manifest["dropped"]
    held = sum(e["split"] == "val" for e in files)
    lines = ["# Photo corpus", "",
             f"Built by `python -m training.corpus`: {len(files)} images ({held} held out for validation, "
             f"never trained on), long side at most {manifest['max_side']} px. `manifest.json` holds the same "
             "and its `split` is what training uses.", "",
             "| file | split | source | licence | copyright | original | original size |",
             "|---|---|---|---|---|---|---|"]
    for e in files:
        original = f"{e['original_path']} ({e['package_version']})" if e["package_version"] else e["original_path"]
        size = "×".join(map(str, e["original_size"])) if e["original_size"] else ""
        lines.append(f"| {cell(e['file'])} | {e['split']} | {cell(e['source'])} | {cell(e['licence'])} | "
                     f"{cell(e['copyright'])} | {cell(original)} | {size} |")
    lines += ["", f"## Dropped ({len(dropped)})", "", "| original | source | reason | why |", "|---|---|---|---|"]
    for d in dropped:
        lines.append(f"| {cell(d['original_path'])} | {cell(d['source'])} | {d['reason']} | {cell(d['detail'])} |")
    return "\n".join(lines) + "\n"


def contact_sheet(photos: list[Photo], path: Path) -> None:
    """Kept (green) then dropped (red) files with their measures: how the thresholds were set."""
    tile, text_h, cols = 192, 44, 8
    tiles = []
    for p in sorted(photos, key=lambda p: (p.reason is not None, p.reason or "", p.original_path)):
        t = np.full((tile + text_h, tile, 3), 255, np.uint8)
        if p.preview is not None:
            t[:p.preview.shape[0], :p.preview.shape[1]] = p.preview
        colour = (0, 150, 0) if p.reason is None else (200, 0, 0)
        cv2.rectangle(t, (0, 0), (tile - 1, tile + text_h - 1), colour, 2)
        m = p.measures
        lines = [Path(p.rel).name[:30], p.reason or f"kept ({p.split})",
                 f"g{m['gradient']:.1f} c{m['colours']} f{m['flat']:.2f}" if "gradient" in m else ""]
        for i, line in enumerate(lines):
            cv2.putText(t, line, (4, tile + 12 + 13 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.36, colour, 1, cv2.LINE_AA)
        tiles.append(t)
    tiles += [np.full_like(tiles[0], 255)] * (-len(tiles) % cols)
    sheet = np.vstack([np.hstack(tiles[i:i + cols]) for i in range(0, len(tiles), cols)])
    write_png(path, sheet)


def summary(kept: list[Photo], dropped: list[Photo], out: Path, removed: list[str], seconds: float) -> str:
    lines = [f"kept {len(kept)} images in {out} ({seconds:.0f} s):"]
    sources = list(dict.fromkeys(p.source for p in kept + dropped))
    for s in sources:
        k = sum(p.source == s for p in kept)
        d = sum(p.source == s for p in dropped)
        lines.append(f"  {s}: {k} kept of {k + d} found" + (f", {d} dropped" if d else ""))
    held = sorted(p.file for p in kept if p.split == "val")
    lines.append(f"held out {len(held)}: {', '.join(held)}")
    lines.append(f"dropped {len(dropped)}:")
    for reason, n in Counter(p.reason for p in dropped).most_common():
        lines.append(f"  {reason}: {n}")
    if removed:
        lines.append(f"removed {len(removed)} PNGs of the previous run no longer in the corpus")
    return "\n".join(lines)


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    with reported_as_exit():
        # argparse would keep only the last of several --folder flags, silently.
        if sum(a == "--folder" or a.startswith("--folder=") for a in argv) > 1:
            raise UsageError("--folder was given more than once; give it once with every folder: --folder A B")
        return build(parse_options(Options, argv, __doc__.splitlines()[0]))


def build(opts: Options) -> dict:
    started = time.monotonic()
    out, debs = Path(opts.out), Path(opts.debs)
    if opts.max_side < 64:
        raise UsageError(f"--max-side {opts.max_side} is too small; pass at least 64 (default 1280)")
    if not 0 <= opts.val_fraction < 1:
        raise UsageError(f"--val-fraction {opts.val_fraction} must be in [0, 1)")
    if opts.dead_leaves < 0 or opts.text_pages < 0:
        raise UsageError("--dead-leaves and --text-pages must be 0 or more")
    sheet = Path(opts.contact_sheet) if opts.contact_sheet else None
    if sheet and out.resolve() in sheet.resolve().parents:
        raise UsageError(f"--contact-sheet {sheet} is inside --out, where training would read it as a "
                         "photo; write it elsewhere")
    packages = [] if opts.skip_packages else list(opts.packages)
    if packages:
        require_tools(packages, debs)
    old = previous_files(out)

    photos: list[Photo] = []
    if opts.builtin:
        photos += load_all(builtin_photos(), opts.max_side, opts.exclude)
    for rank, package in enumerate(packages, start=1):
        deb = find_deb(package, debs) or download_deb(package, debs)
        print(f"{package}: {deb.name}", flush=True)
        with tempfile.TemporaryDirectory(prefix=f"corpus-{package}-") as tmp:
            unpack(deb, Path(tmp))
            found = package_photos(package, Path(tmp), deb_field(deb, "Version"), rank)
            photos += load_all(found, opts.max_side, opts.exclude)
    for rank, folder in enumerate(opts.folder or [], start=len(packages) + 1):
        photos += load_all(folder_photos(folder, rank), opts.max_side, opts.exclude)
    drop_duplicates(photos)

    kept = [p for p in photos if p.reason is None]
    side = min(PROCEDURAL_SIDE, opts.max_side)
    # Each kind has its own random stream, so adding one kind never changes the other's images.
    for kind, count, draw, stream in (("dead-leaves", opts.dead_leaves, dead_leaves, []),
                                      ("text-pages", opts.text_pages, text_page, [1])):
        for i in range(count):
            image = draw(side, np.random.default_rng([opts.seed, i, *stream]))
            kept.append(Photo(f"procedural:{kind}", kind, f"{i:04d}", None, licence="generated",
                              rank=10 ** 6, image=image, original_size=[side, side], preview=resize_to(image, 192)))
    if not kept:
        raise UsageError("no image was kept; pass --folder DIR with photos (or leave out --skip-packages)")
    name_files(kept)
    assign_splits(kept, opts.val_fraction)

    out.mkdir(parents=True, exist_ok=True)
    for p in kept:
        write_png(out / p.file, p.image)
    dropped = sorted((p for p in photos if p.reason), key=lambda p: (p.rank, p.original_path))
    manifest = {"version": 1, "max_side": opts.max_side, "val_fraction": opts.val_fraction,
                "seed": opts.seed, "packages": packages,
                "files": [entry(p) for p in sorted(kept, key=lambda p: p.file)],
                "dropped": [dropped_entry(p) for p in dropped]}
    write_atomically(out / "manifest.json", (json.dumps(manifest, indent=1) + "\n").encode())
    write_atomically(out / "SOURCES.md", sources_md(manifest).encode())
    removed = remove_stale(out, old, {p.file for p in kept})
    if sheet:
        contact_sheet(photos + [p for p in kept if is_procedural(p)], sheet)
    print(summary(kept, dropped, out, removed, time.monotonic() - started), flush=True)
    return manifest


if __name__ == "__main__":
    main()
