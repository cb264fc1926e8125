"""Image-quality measures and the classical baseline they are compared against.

PSNR and SSIM are scikit-image's, on H×W×3 float RGB in [0, 1]. PSNR of identical
images is infinite; it is capped at ``PSNR_CAP`` dB so reports stay valid JSON.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

PSNR_CAP = 100.0


def psnr(reference: np.ndarray, image: np.ndarray) -> float:
    reference = reference.astype(np.float64)
    image = np.clip(image, 0, 1).astype(np.float64)
    if np.array_equal(reference, image):
        return PSNR_CAP
    return min(PSNR_CAP, float(peak_signal_noise_ratio(reference, image, data_range=1.0)))


def ssim(reference: np.ndarray, image: np.ndarray) -> float:
    return float(structural_similarity(reference.astype(np.float64), np.clip(image, 0, 1).astype(np.float64),
                                       channel_axis=2, data_range=1.0))


def batch_scores(reference: torch.Tensor, images: torch.Tensor) -> tuple[float, float]:
    """Mean PSNR and SSIM over a batch of N×3×H×W tensors."""
    ref = reference.detach().float().clamp(0, 1).cpu().numpy().transpose(0, 2, 3, 1)
    out = images.detach().float().clamp(0, 1).cpu().numpy().transpose(0, 2, 3, 1)
    scores = [(psnr(r, o), ssim(r, o)) for r, o in zip(ref, out)]
    return float(np.mean([s[0] for s in scores])), float(np.mean([s[1] for s in scores]))


def unsharp_mask(image: np.ndarray, amount: float = 0.6, sigma: float = 1.0) -> np.ndarray:
    """The classical sharpener (as in OBS): image + amount · (image − blur(image))."""
    blurred = cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT_101)
    return np.clip(image + amount * (image - blurred), 0, 1).astype(np.float32)
