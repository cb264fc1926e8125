"""SharpCam: real-time learned webcam sharpening into a virtual camera.

The package is torch-free: the student network runs as ONNX under
onnxruntime.  ``DEFAULT_MODEL`` is the student that ships inside the package.
"""
from __future__ import annotations

import os

__version__ = "0.1.0"

ASSETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
DEFAULT_MODEL = os.path.join(ASSETS_DIR, "student.onnx")
DEMO_IMAGE = os.path.join(ASSETS_DIR, "demo.jpg")

__all__ = ["ASSETS_DIR", "DEFAULT_MODEL", "DEMO_IMAGE", "__version__"]
