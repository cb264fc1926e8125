"""Procedural pages of text: what ``training.corpus --text-pages N`` adds to a corpus, and the
fresh crops of print, small and large, that ``training.distill --correct-source text-pages``
teaches from.

Documents, slides and screens held up to a webcam are fine strokes of high contrast on flat
ground, which photographs hardly contain. A frame full of such strokes is also what the
student's frame-wide judgement misreads: even softened, its edges are steeper than a sharp
photo's, so it reads as already crisp (docs/design_rounds.md, "Eleventh round").
"""
from __future__ import annotations

import cv2
import numpy as np

# OpenCV's built-in stroke fonts: nothing to download, the same on every machine.
HERSHEY_FACES = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_DUPLEX,
                 cv2.FONT_HERSHEY_COMPLEX, cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_COMPLEX_SMALL)
TEXT_ALPHABET = "abcdefghijklmnopqrstuvwxyzabcdeeeilmnnorsttu0123456789ABCDEFGHIKLMNOPRST.,:;()-=/"
TEXT_SUPERSAMPLE = 4


def text_page(side: int, rng: np.random.Generator) -> np.ndarray:
    """A page of rendered text: lines of random words in OpenCV's stroke fonts at many sizes
    (capitals 5–40 px tall), dark ink on paper or light type on a dark slide, now and then
    a rule or a box, under a gentle illumination ramp, slightly rotated. Drawn at 4× and
    reduced with an area filter, so strokes end in the partial pixels a camera's sensor
    gives them. Documents, slides and screens held up to a webcam are all fine strokes of
    high contrast on flat ground, which photographs hardly contain."""
    big = side * TEXT_SUPERSAMPLE
    dark_ground = rng.random() < 0.25
    ground = rng.uniform(0.05, 0.3, 3) if dark_ground else rng.uniform(0.72, 0.98) - rng.uniform(0, 0.08, 3)
    canvas = np.empty((big, big, 3), np.uint8)  # OpenCV draws text on 8-bit images only
    canvas[:] = np.round(ground * 255)
    y = int(rng.integers(0, 40 * TEXT_SUPERSAMPLE))
    while y < big:
        cap = float(np.exp(rng.uniform(np.log(5.0), np.log(40.0)))) * TEXT_SUPERSAMPLE
        face = HERSHEY_FACES[int(rng.integers(len(HERSHEY_FACES)))]
        scale = cap / cv2.getTextSize("H", face, 1.0, 1)[0][1]
        thickness = max(1, int(round(cap * rng.uniform(0.06, 0.14))))
        if dark_ground:
            ink = 255 - rng.uniform(0, 64, 3)
        elif rng.random() < 0.2:  # coloured type: links, headings, highlighter pens
            ink = rng.uniform(0, 180, 3)
        else:
            ink = np.full(3, rng.uniform(0, 90))
        lines = int(rng.integers(1, 8))
        for _ in range(lines):
            y += int(cap * rng.uniform(1.4, 2.0))
            if y >= big:
                break
            x = int(rng.integers(0, 60 * TEXT_SUPERSAMPLE))
            if rng.random() < 0.08:
                cv2.line(canvas, (x, y), (big, y), tuple(map(float, ink)), thickness, cv2.LINE_AA)
                continue
            while x < big:
                word = "".join(rng.choice(list(TEXT_ALPHABET), int(rng.integers(1, 10))))
                cv2.putText(canvas, word, (x, y), face, scale, tuple(map(float, ink)), thickness, cv2.LINE_AA)
                x += cv2.getTextSize(word + " ", face, scale, thickness)[0][0]
        if rng.random() < 0.1:
            top = max(0, y - int(cap * lines * 2))
            cv2.rectangle(canvas, (int(rng.integers(0, big // 4)), top), (int(rng.integers(big // 2, big)), y + int(cap)),
                          tuple(map(float, ink)), thickness, cv2.LINE_AA)
        y += int(cap * rng.uniform(0.5, 3.0))
    ramp = np.linspace(-1, 1, big, dtype=np.float32)
    shade = (1 + rng.uniform(-0.08, 0.08) * ramp[:, None] + rng.uniform(-0.08, 0.08) * ramp[None, :]) / 255
    canvas = canvas * shade[..., None]
    angle = float(rng.uniform(-4, 4)) if rng.random() < 0.5 else 0.0
    if angle:
        turn = cv2.getRotationMatrix2D((big / 2, big / 2), angle, 1.0)
        canvas = cv2.warpAffine(canvas, turn, (big, big), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    page = cv2.resize(canvas, (side, side), interpolation=cv2.INTER_AREA)
    return (np.clip(page, 0, 1) * 255 + 0.5).astype(np.uint8)


# A page drawn this many times larger than the crop and reduced: capitals of 5–40 px at the
# page's own scale become 2–40 px, the small print of a page held at arm's length.
TEXT_CROP_SCALES = (1.0, 1.5, 2.0, 3.0)
# A photographed page is rarely pristine: its "sharp" version is softened this much
# (Gaussian σ, px) on a share of the crops, so softish text is still text to sharpen.
TEXT_CROP_SOFTNESS = (0.3, 0.6)


# Large print in focus: a page held close to the camera, or the big type of a slide. Drawn at
# 1/1.5–1/3 of the crop and enlarged with cubic interpolation, its strokes are wide and soft
# though nothing blurred them. Without such crops the student sharpens large soft print as if
# it were small print blurred, past the page itself (docs/design_rounds.md, "Twelfth round").
TEXT_CROP_ENLARGEMENT = (1.5, 3.0)
TEXT_CROP_ENLARGED_SHARE = 0.25


def text_crop(crop: int, rng: np.random.Generator, soft_share: float = 0.5,
              enlarged_share: float = TEXT_CROP_ENLARGED_SHARE) -> np.ndarray:
    """A crop×crop float32 RGB page of text in [0, 1], freshly drawn. With probability
    `enlarged_share`, large print: a `text_page` 1/TEXT_CROP_ENLARGEMENT of the crop, enlarged
    with cubic interpolation. Otherwise small print: a `text_page` at one of TEXT_CROP_SCALES
    times the crop, reduced with an area filter, and softened a little (TEXT_CROP_SOFTNESS)
    with probability `soft_share`."""
    if rng.random() < enlarged_share:
        factor = float(rng.uniform(*TEXT_CROP_ENLARGEMENT))
        page = text_page(int(round(crop / factor)), rng).astype(np.float32) / 255
        return np.clip(cv2.resize(page, (crop, crop), interpolation=cv2.INTER_CUBIC), 0, 1).astype(np.float32)
    scale = float(rng.choice(TEXT_CROP_SCALES))
    page = text_page(int(round(crop * scale)), rng).astype(np.float32) / 255
    if scale != 1.0:
        page = cv2.resize(page, (crop, crop), interpolation=cv2.INTER_AREA)
    if rng.random() < soft_share:
        sigma = float(rng.uniform(*TEXT_CROP_SOFTNESS))
        page = np.stack([cv2.GaussianBlur(page[..., c], (0, 0), sigma) for c in range(3)], -1)
    return np.clip(page, 0, 1).astype(np.float32)
