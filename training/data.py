"""Training and validation data: image folders, paired folders, unpaired frames.

Four sources, one shape of sample — a tuple of C×H×W float tensors in [0, 1]:
- ``SyntheticPairs``: sharp photos, randomly cropped/flipped/rotated and degraded
  on the fly -> ``(degraded, sharp)``;
- ``PairedCrops``: the original project's ``blur/`` + ``sharp/`` folders, matched by
  file name -> ``(blurred, sharp)``;
- ``UnpairedCrops``: frames with no sharp reference (own webcam) -> ``(frame,)``;
- ``TextPageCrops``: procedural pages of print, small and large, drawn fresh -> ``(degraded, sharp)``.

Randomness is keyed by (seed, sample key), never by worker or process state, so a
sample is the same whichever DataLoader worker or DDP rank draws it, and a resumed
run sees exactly the data it would have seen. ``RunSampler`` hands out keys
``epoch * len(dataset) + index``.

The split into train and validation is by file: a hash of each file's relative
path decides, so it is stable across machines and runs, and validation files are
never trained on. With no data argument, the photographs that scikit-image ships in
its installed package are used (read from disk, never downloaded).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
import skimage.data
import torch
from torch.utils.data import Dataset, Sampler

from training.degrade import get_preset
from training.errors import UsageError
from training.text_pages import text_crop

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")

# scikit-image's bundled images that are real, sharp photographs or scans (the
# motion-blurred clock, binary masks and the right stereo view — a near duplicate
# of the left one, which would leak across the split — are left out).
BUILTIN_TRAIN = ("astronaut.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg",
                 "retina.jpg", "ihc.png", "text.png", "coins.png", "moon.png", "brick.png",
                 "grass.png", "gravel.png", "color.png")
# Held out by name rather than by hash, so faces, text and texture all stay held out.
BUILTIN_VAL = ("chelsea.png", "coffee.png", "camera.png", "page.png")


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def read_image(path: str | os.PathLike) -> np.ndarray | None:
    """H×W×3 float32 RGB in [0, 1], or None when the file cannot be decoded."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)  # fromfile+imdecode copes with non-ASCII paths
        image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    except OSError:
        return None
    if image is None:
        return None
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    else:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    scale = 65535.0 if image.dtype == np.uint16 else 255.0
    return image.astype(np.float32) / scale


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files under ``folder`` (recursive), sorted; a clear error when there are none."""
    root = Path(folder)
    if not root.is_dir():
        raise UsageError(f"image folder {str(root)!r} does not exist; pass an existing folder")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise UsageError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {str(root)!r}; "
                         "put images there or pass another folder")
    return files


def builtin_dir() -> Path:
    return Path(skimage.data.__file__).parent


def builtin_files(split: str) -> list[Path]:
    names = BUILTIN_TRAIN if split == "train" else BUILTIN_VAL
    folder = builtin_dir()
    files = [folder / n for n in names if (folder / n).is_file()]
    if not files:
        raise UsageError(f"scikit-image's bundled photos are missing from {folder}; "
                         "reinstall scikit-image or pass --data DIR")
    return files


def is_validation(name: str, val_fraction: float) -> bool:
    digest = hashlib.sha256(name.replace(os.sep, "/").encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < val_fraction


def split_names(names: Sequence[str], val_fraction: float = 0.15) -> tuple[list[str], list[str]]:
    """Deterministic split by name hash; at least one of each when there are two or more."""
    names = sorted(names)
    val = [n for n in names if is_validation(n, val_fraction)]
    if len(names) >= 2:
        ranked = sorted(names, key=lambda n: hashlib.sha256(n.replace(os.sep, "/").encode()).digest())
        if not val:
            val = [ranked[0]]
        if len(val) == len(names):
            val = val[:-1]
    train = [n for n in names if n not in set(val)]
    return train, val


def read_manifest(folder: Path) -> dict | None:
    """The corpus manifest (``python -m training.corpus``) of a data folder, if it has one."""
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
        if not all(entry["split"] in ("train", "val") and isinstance(entry["file"], str) for entry in files):
            raise ValueError("a file entry without a train/val split")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{path} is not a readable corpus manifest ({e}); rebuild it with "
                         f"`python -m training.corpus --out {folder}` or remove it") from None
    return manifest


def manifest_split(manifest: dict, rel: dict, folder: Path) -> tuple[list[str], list[str]]:
    """Train and held-out names as the corpus manifest records them: the held-out photos
    were chosen when the corpus was built and must stay held out, whatever --val-fraction
    says. Images the manifest does not list (a user's additions) are trained on."""
    split = {entry["file"]: entry["split"] for entry in manifest["files"]}
    val = sorted(n for n in rel if split.get(n) == "val")
    train = sorted(n for n in rel if split.get(n) != "val")
    missing = sorted(set(split) - set(rel))
    if missing:
        warn(f"{len(missing)} files listed in {folder}/manifest.json are missing ({', '.join(missing[:3])}"
             f"{', ...' if len(missing) > 3 else ''})")
    return train, val


def load_images(files: Sequence[Path], what: str = "images") -> tuple[list[Path], list[np.ndarray]]:
    """Decode every file once (threads: OpenCV releases the GIL); skip and count unreadable ones."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        decoded = list(pool.map(read_image, files))
    kept = [(f, im) for f, im in zip(files, decoded) if im is not None]
    skipped = [f for f, im in zip(files, decoded) if im is None]
    if skipped:
        examples = ", ".join(p.name for p in skipped[:3]) + (", ..." if len(skipped) > 3 else "")
        warn(f"skipped {len(skipped)} unreadable or corrupt {what} ({examples})")
    if not kept:
        raise UsageError(f"none of the {len(files)} {what} could be read; check the files")
    return [f for f, _ in kept], [im for _, im in kept]


# --- cropping and augmentation ------------------------------------------------------


def pad_to(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    if h >= size and w >= size:
        return image
    ph, pw = max(0, size - h), max(0, size - w)
    return cv2.copyMakeBorder(image, ph // 2, ph - ph // 2, pw // 2, pw - pw // 2, cv2.BORDER_REFLECT_101)


def random_crop(images: Sequence[np.ndarray], size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """The same random window from each (equally sized) image."""
    images = [pad_to(im, size) for im in images]
    h, w = images[0].shape[:2]
    y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    return [im[y:y + size, x:x + size] for im in images]


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    image = pad_to(image, size)
    h, w = image.shape[:2]
    y, x = (h - size) // 2, (w - size) // 2
    return image[y:y + size, x:x + size]


def random_flip_rotate(images: Sequence[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """One of the 8 flips/90° rotations, the same for each image."""
    k, flip = int(rng.integers(4)), bool(rng.integers(2))
    out = []
    for im in images:
        im = np.rot90(im, k)
        out.append(np.ascontiguousarray(im[:, ::-1] if flip else im))
    return out


def to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))


def to_image(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().float().clamp(0, 1).cpu().numpy().transpose(1, 2, 0)


def sample_rng(seed: int, key: int) -> np.random.Generator:
    return np.random.default_rng([seed, key])


# --- datasets ------------------------------------------------------------------------


def scaled_contrast(image: np.ndarray, rng: np.random.Generator, low: float, high: float) -> np.ndarray:
    """The image with its contrast about its mean scaled by a factor drawn log-uniformly
    from [low, high]: the same scene in flatter (or harder) light."""
    factor = float(np.exp(rng.uniform(np.log(low), np.log(high))))
    mean = image.mean(dtype=np.float64)
    return np.clip(mean + factor * (image - mean), 0, 1).astype(np.float32)


def scaled_crop(image: np.ndarray, size: int, rng: np.random.Generator, low: float, high: float) -> np.ndarray:
    """A random size×size crop of the image seen at a scale drawn log-uniformly from
    [low, high] ≤ 1: a window of size/scale pixels, area-downscaled to size. The same
    photo then shows its detail at more sizes, as a camera farther off would."""
    scale = float(np.exp(rng.uniform(np.log(low), np.log(high))))
    window = max(size, round(size / scale))
    (crop,) = random_crop([image], window, rng)
    if window == size:
        return crop
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)


class SyntheticPairs(Dataset):
    """Sharp images -> (degraded, sharp) random crops; ``crops_per_image`` crops per epoch.
    ``contrast=(low, high)`` scales each sharp crop's contrast first (`scaled_contrast`),
    so the sharp target and what is degraded are the same flatter crop; ``scale=(low,
    high)`` cuts each crop from the photo seen smaller (`scaled_crop`)."""

    def __init__(self, images: Sequence[np.ndarray], crop: int, degradation: str = "webcam",
                 seed: int = 0, crops_per_image: int = 16, augment: bool = True,
                 always_degrade: bool = False, contrast: tuple[float, float] | None = None,
                 scale: tuple[float, float] | None = None):
        self.images, self.crop, self.seed = list(images), crop, seed
        self.contrast, self.scale = contrast, scale
        # Validation wants every crop degraded: an untouched crop scores infinite PSNR
        # and would swamp the mean.
        self.always_degrade = always_degrade
        self.degradation_name = degradation
        self.degrade: Callable = get_preset(degradation)
        self.crops_per_image, self.augment = crops_per_image, augment

    def __len__(self) -> int:
        return len(self.images) * self.crops_per_image

    def __getitem__(self, key: int):
        rng = sample_rng(self.seed, int(key))
        sharp = self.images[int(key) % len(self)  % len(self.images)]
        if self.scale:
            sharp = scaled_crop(sharp, self.crop, rng, *self.scale)
        else:
            (sharp,) = random_crop([sharp], self.crop, rng)
        if self.augment:
            (sharp,) = random_flip_rotate([sharp], rng)
        if self.contrast:
            sharp = scaled_contrast(sharp, rng, *self.contrast)
        degraded = self.degrade(sharp, rng)
        while self.always_degrade and degraded is sharp:
            degraded = self.degrade(sharp, rng)
        return to_tensor(degraded), to_tensor(sharp)


class TextPageCrops(Dataset):
    """Fresh pages of print (`training.text_pages.text_crop`) -> (degraded, sharp)
    crops; ``length`` crops per epoch, each drawn anew from its key. What a frame full of
    text teaches: that its strokes, steep as they look, may still be soft."""

    def __init__(self, crop: int, degradation: str = "webcam", seed: int = 0, length: int = 1000,
                 soft_share: float = 0.5):
        self.crop, self.seed, self.length, self.soft_share = crop, seed, length, soft_share
        self.degrade: Callable = get_preset(degradation)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: int):
        rng = sample_rng(self.seed, int(key))
        sharp = text_crop(self.crop, rng, self.soft_share)
        return to_tensor(self.degrade(sharp, rng)), to_tensor(sharp)


class PairedCrops(Dataset):
    """Blurred/sharp image pairs -> aligned crops (optionally both resized to ``resize`` first)."""

    def __init__(self, pairs: Sequence[tuple[np.ndarray, np.ndarray]], crop: int, seed: int = 0,
                 crops_per_image: int = 1, resize: int | None = None, augment: bool = True):
        if resize:
            pairs = [(cv2.resize(b, (resize, resize), interpolation=cv2.INTER_AREA),
                      cv2.resize(s, (resize, resize), interpolation=cv2.INTER_AREA)) for b, s in pairs]
        self.pairs, self.crop, self.seed = list(pairs), crop, seed
        self.crops_per_image, self.augment = crops_per_image, augment

    def __len__(self) -> int:
        return len(self.pairs) * self.crops_per_image

    def __getitem__(self, key: int):
        rng = sample_rng(self.seed, int(key))
        blurred, sharp = self.pairs[int(key) % len(self) % len(self.pairs)]
        crops = random_crop([blurred, sharp], self.crop, rng)
        if self.augment:
            crops = random_flip_rotate(crops, rng)
        return to_tensor(crops[0]), to_tensor(crops[1])


class UnpairedCrops(Dataset):
    """Frames without ground truth -> ``(frame,)`` crops; the teacher provides the label."""

    def __init__(self, frames: Sequence[np.ndarray], crop: int, seed: int = 0,
                 crops_per_image: int = 4, augment: bool = True):
        self.frames, self.crop, self.seed = list(frames), crop, seed
        self.crops_per_image, self.augment = crops_per_image, augment

    def __len__(self) -> int:
        return len(self.frames) * self.crops_per_image

    def __getitem__(self, key: int):
        rng = sample_rng(self.seed, int(key))
        (frame,) = random_crop([self.frames[int(key) % len(self) % len(self.frames)]], self.crop, rng)
        if self.augment:
            (frame,) = random_flip_rotate([frame], rng)
        return (to_tensor(frame),)


class CropPool(Dataset):
    """A fixed pool of crops degraded once, reused every epoch with a fresh flip/rotation.

    On a CPU the degradations (blur, noise, JPEG) cost as much as a training step of a
    small student; paying them once keeps the loop compute-bound. Crops are stored as
    uint8, as a webcam delivers frames, which also keeps 20,000 96×96 pairs near 1 GB.
    Items have the shape of the dataset the pool was drawn from."""

    def __init__(self, parts: Sequence[torch.Tensor], seed: int = 0):
        self.parts, self.seed = list(parts), seed

    @classmethod
    def build(cls, dataset: Dataset, size: int, seed: int = 0) -> "CropPool":
        # Keys 0..size-1 draw distinct random crops even past len(dataset).
        samples = [dataset[i] for i in range(size)]
        parts = [torch.stack([s[j] for s in samples]).mul(255).round_().clamp_(0, 255).to(torch.uint8)
                 for j in range(len(samples[0]))]
        return cls(parts, seed)

    @classmethod
    def concatenate(cls, pools: Sequence["CropPool"], seed: int = 0) -> "CropPool":
        """One pool holding every crop of `pools` (items of the same shape)."""
        return cls([torch.cat(parts) for parts in zip(*(pool.parts for pool in pools))], seed)

    def __len__(self) -> int:
        return len(self.parts[0])

    def __getitem__(self, key: int):
        rng = sample_rng(self.seed + 104729, int(key))
        k, flip = int(rng.integers(4)), bool(rng.integers(2))
        out = []
        for part in self.parts:
            x = torch.rot90(part[int(key) % len(self)], k, dims=(1, 2))
            out.append((x.flip(2) if flip else x).float().div_(255))
        return tuple(out)


class Flagged(Dataset):
    """Each item of `dataset` with one more tensor, a 1×1×1 `flag` (0 or 1): which part of
    a mixed pool a crop came from, riding along through flips and rotations (the
    anchored fine-tune's ``kept``, `loop.Objective`)."""

    def __init__(self, dataset: Dataset, flag: float):
        self.dataset, self.flag = dataset, float(flag)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int):
        return (*self.dataset[key], torch.full((1, 1, 1), self.flag))


def epoch_keys(n: int, epoch: int, seed: int, rank: int = 0, world: int = 1) -> list[int]:
    """This rank's share of one shuffled epoch, as keys ``epoch * n + index``."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    per_rank = n // world  # equal shares keep DDP ranks in lock-step
    return [epoch * n + i for i in order[rank * per_rank:(rank + 1) * per_rank]]


# --- building the data a command asked for -------------------------------------------


@dataclass
class DataSource:
    """What a command trains and validates on; ``describe`` goes into metrics and cache keys."""
    kind: str                      # "builtin" | "folder" | "paired" | "unpaired"
    train_files: list[Path]
    val_files: list[Path]
    train_images: list             # arrays, or (blurred, sharp) tuples for paired
    val_images: list
    describe: dict


def _file_fingerprint(files: Sequence[Path]) -> list:
    return [[str(f), f.stat().st_size, int(f.stat().st_mtime)] for f in files]


def load_source(*, data: str | None = None, paired: Sequence[str] | None = None,
                unpaired: str | None = None, val_fraction: float = 0.15) -> DataSource:
    """Resolve ``--data`` / ``--paired`` / ``--unpaired`` (or the built-in photos) to decoded images."""
    given = [x for x in (data, paired, unpaired) if x]
    if len(given) > 1:
        raise UsageError("pass only one of --data, --paired and --unpaired")
    if paired:
        return _load_paired(paired[0], paired[1], val_fraction)
    if unpaired or data:
        folder = Path(unpaired or data)
        files = list_images(folder)
        rel = {str(f.relative_to(folder)).replace(os.sep, "/"): f for f in files}
        manifest = read_manifest(folder)
        if manifest is not None and not unpaired:
            train_names, val_names = manifest_split(manifest, rel, folder)
        else:
            train_names, val_names = split_names(list(rel), val_fraction)
        kind = "unpaired" if unpaired else "folder"
    else:
        kind, folder = "builtin", builtin_dir()
        train_names = [f.name for f in builtin_files("train")]
        val_names = [f.name for f in builtin_files("val")]
        rel = {n: folder / n for n in train_names + val_names}
    train_files, train_images = load_images([rel[n] for n in train_names], "images")
    val_files, val_images = (load_images([rel[n] for n in val_names], "validation images")
                             if val_names else ([], []))
    describe = {"kind": kind, "root": str(folder), "train": _file_fingerprint(train_files),
                "val": _file_fingerprint(val_files)}
    return DataSource(kind, train_files, val_files, train_images, val_images, describe)


def load_independent(paths: Sequence[str]) -> DataSource:
    """Every image of the given files and folders, all of them held out: photos the corpus
    never had (other packages' samples, a user's own frames), scored as an independent check."""
    files: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_file():
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                raise UsageError(f"{given!r} is not an image ({', '.join(IMAGE_EXTENSIONS)}); "
                                 "pass image files or folders")
            files.append(path)
        elif path.is_dir():
            files.extend(list_images(path))
        else:
            raise UsageError(f"{given!r} does not exist; pass existing image files or folders")
    files, images = load_images(files, "images")
    return DataSource("independent", [], files, [], images,
                      {"kind": "independent", "root": None, "train": [], "val": _file_fingerprint(files)})


def match_pairs(blur_dir: Path, sharp_dir: Path) -> list[tuple[str, Path, Path]]:
    """Pairs by identical relative file name; one warning line listing the unmatched."""
    blur = {str(p.relative_to(blur_dir)): p for p in list_images(blur_dir)}
    sharp = {str(p.relative_to(sharp_dir)): p for p in list_images(sharp_dir)}
    only_blur, only_sharp = sorted(set(blur) - set(sharp)), sorted(set(sharp) - set(blur))
    if only_blur or only_sharp:
        def some(names):
            return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        warn(f"unmatched names: {len(only_blur)} in {blur_dir} without a sharp twin ({some(only_blur)}), "
             f"{len(only_sharp)} in {sharp_dir} without a blurred twin ({some(only_sharp)})")
    common = sorted(set(blur) & set(sharp))
    if not common:
        raise UsageError(f"no file name appears in both {str(blur_dir)!r} and {str(sharp_dir)!r}; "
                         "pairs must share a file name (e.g. blur/0001.png and sharp/0001.png)")
    return [(n, blur[n], sharp[n]) for n in common]


def _load_pairs(pairs: Sequence[tuple[str, Path, Path]]) -> tuple[list[tuple[str, Path, Path]], list]:
    files = [b for _, b, _ in pairs] + [s for _, _, s in pairs]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        decoded = list(pool.map(read_image, files))
    n = len(pairs)
    kept, images, bad = [], [], []
    for i, pair in enumerate(pairs):
        b, s = decoded[i], decoded[n + i]
        if b is None or s is None:
            bad.append(pair[0])
        elif b.shape != s.shape:
            bad.append(pair[0] + " (sizes differ)")
        else:
            kept.append(pair)
            images.append((b, s))
    if bad:
        warn(f"skipped {len(bad)} unreadable, corrupt or mismatched pairs ({', '.join(bad[:3])}"
             f"{', ...' if len(bad) > 3 else ''})")
    return kept, images


def _load_paired(blur_dir: str, sharp_dir: str, val_fraction: float) -> DataSource:
    pairs = match_pairs(Path(blur_dir), Path(sharp_dir))
    by_name = {n: (n, b, s) for n, b, s in pairs}
    train_names, val_names = split_names(list(by_name), val_fraction)
    train_pairs, train_images = _load_pairs([by_name[n] for n in train_names])
    val_pairs, val_images = _load_pairs([by_name[n] for n in val_names])
    if not train_images:
        raise UsageError(f"no readable pairs in {blur_dir!r} / {sharp_dir!r}; check the files")
    describe = {"kind": "paired", "root": [str(blur_dir), str(sharp_dir)],
                "train": _file_fingerprint([p for _, b, s in train_pairs for p in (b, s)]),
                "val": _file_fingerprint([p for _, b, s in val_pairs for p in (b, s)])}
    return DataSource("paired", [b for _, b, _ in train_pairs], [b for _, b, _ in val_pairs],
                      train_images, val_images, describe)


def train_dataset(source: DataSource, *, crop: int, degradation: str, seed: int,
                  crops_per_image: int, resize: int | None = None,
                  contrast: tuple[float, float] | None = None,
                  scale: tuple[float, float] | None = None) -> Dataset:
    if source.kind == "paired":
        return PairedCrops(source.train_images, crop, seed, crops_per_image, resize=resize)
    if source.kind == "unpaired":
        return UnpairedCrops(source.train_images, crop, seed, crops_per_image)
    return SyntheticPairs(source.train_images, crop, degradation, seed, crops_per_image, contrast=contrast,
                          scale=scale)


def validation_batch(source: DataSource, *, crop: int, degradation: str, seed: int,
                     crops_per_image: int = 2, resize: int | None = None) -> tuple[torch.Tensor, ...]:
    """A fixed validation set as stacked tensors: the same crops and degradations every call."""
    images = source.val_images
    if not images:
        return ()
    # A different seed stream from training, fixed forever, without augmentation.
    val_seed = seed + 7919
    if source.kind == "paired":
        ds: Dataset = PairedCrops(images, crop, val_seed, crops_per_image, resize=resize, augment=False)
    elif source.kind == "unpaired":
        ds = UnpairedCrops(images, crop, val_seed, crops_per_image, augment=False)
    else:
        ds = SyntheticPairs(images, crop, degradation, val_seed, crops_per_image, augment=False,
                            always_degrade=True)
    samples = [ds[i] for i in range(len(ds))]
    return tuple(torch.stack(parts) for parts in zip(*samples))


class RunSampler(Sampler):
    """Keys for epochs ``start_epoch`` .. ``end_epoch - 1`` back to back, in whole batches.

    One sampler for the whole run lets a single DataLoader keep its workers alive;
    each epoch is cut to a multiple of ``batch_size`` so a batch never spans two
    epochs and ``step // steps_per_epoch`` is the epoch. ``skip_batches`` resumes
    mid-epoch.
    """

    def __init__(self, n: int, seed: int, batch_size: int, *, rank: int = 0, world: int = 1,
                 start_epoch: int = 0, end_epoch: int = 1, skip_batches: int = 0):
        self.n, self.seed, self.batch_size = n, seed, batch_size
        self.rank, self.world = rank, world
        self.start_epoch, self.end_epoch, self.skip_batches = start_epoch, end_epoch, skip_batches

    @property
    def batches_per_epoch(self) -> int:
        return (self.n // self.world) // self.batch_size

    def __iter__(self):
        per_epoch = self.batches_per_epoch * self.batch_size
        for epoch in range(self.start_epoch, self.end_epoch):
            keys = epoch_keys(self.n, epoch, self.seed, self.rank, self.world)[:per_epoch]
            if epoch == self.start_epoch:
                keys = keys[self.skip_batches * self.batch_size:]
            yield from keys

    def __len__(self) -> int:
        epochs = self.end_epoch - self.start_epoch
        return max(0, epochs * self.batches_per_epoch - self.skip_batches) * self.batch_size


def make_loader(dataset: Dataset, sampler: Sampler, batch_size: int, device: torch.device,
                workers: int) -> torch.utils.data.DataLoader:
    """Worker processes decode and degrade while the GPU trains; pinned memory for fast copies."""
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=True,
        pin_memory=device.type == "cuda", persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None)


def default_crop(device: torch.device, announce: bool = True) -> int:
    """The crop size when none is given: CPU runs are smoke runs, so they get small crops."""
    if device.type == "cuda":
        return 256
    if announce:
        print("note: on CPU crops default to 128×128 to keep runs short; pass --crop 256 for the "
              "full-size protocol", file=sys.stderr)
    return 128


def default_workers(device: torch.device) -> int:
    # On CPU the model competes with workers for the same few cores.
    return min(8, os.cpu_count() or 1) if device.type == "cuda" else 0
