"""Keeps OpenCV's and FFmpeg's own log output off the user's terminal.

SharpCam reports every failure of opening a camera, a video or an output file
itself, in one line that says what to do; the libraries' warning blocks next to
it ("moov atom not found", "can't open camera by index") only confuse.
"""
from __future__ import annotations

import os

import cv2

# AV_LOG_QUIET. OpenCV reads this once, when it first uses FFmpeg in the process, so it is
# set before any capture or writer opens; a user's own setting wins (for debugging).
FFMPEG_QUIET = "-8"


def quiet_native_logs() -> None:
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", FFMPEG_QUIET)
    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    except AttributeError:  # builds without the logging module print nothing anyway
        pass
