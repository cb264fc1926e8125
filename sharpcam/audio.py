"""The input's sound: carried into the sharpened video file with an ffmpeg binary.

OpenCV reads and writes pictures only, so ``--input call.mp4 --output sharp.mp4`` would
lose the call's sound. When an ffmpeg binary is at hand (the one the imageio-ffmpeg
package ships, ``pip install "sharpcam[audio]"``, or else one on PATH), the finished
video gets the input's audio streams: copied unchanged where the container takes them,
else re-encoded. Without one, sharpcam writes the pictures alone and says so.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from typing import Optional

# Where copying the audio fails (Opus into .avi or .mov, say), it is encoded anew with a
# codec every ffmpeg build has and the container takes.
REENCODE = {".mp4": "aac", ".m4v": "aac", ".mov": "aac", ".mkv": "aac", ".avi": "pcm_s16le"}
TIMEOUT = 600  # seconds: muxing copies streams, minutes of video take seconds


def find_ffmpeg() -> Optional[str]:
    """The ffmpeg binary to use, or None: imageio-ffmpeg's, else one on PATH."""
    try:
        # Here, not at the top: it is optional (sharpcam[audio]) and only file runs need it.
        import imageio_ffmpeg
        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):  # not installed, or no binary for this platform
        return shutil.which("ffmpeg")


def has_audio(ffmpeg: str, path: str) -> bool:
    """Whether ``path`` holds at least one audio stream, as ffmpeg reads it."""
    try:
        probe = subprocess.run([ffmpeg, "-hide_banner", "-nostdin", "-i", os.fspath(path)],
                               capture_output=True, text=True, errors="replace", timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    # With no output named, ffmpeg lists the input's streams and exits non-zero.
    return any(line.lstrip().startswith("Stream #") and ": Audio:" in line
               for line in probe.stderr.splitlines())


def mux_audio(ffmpeg: str, video: str, audio_from: str, out: str, seconds: float) -> Optional[str]:
    """Write ``out``: the video stream of ``video`` and the audio streams of ``audio_from``,
    cut to ``seconds`` (a run stopped early has a shorter video). Returns None when it
    worked, else ffmpeg's reason; ``out`` is then removed."""
    ext = os.path.splitext(out)[1].lower()
    command = [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
               "-i", os.fspath(video), "-i", os.fspath(audio_from),
               "-map", "0:v:0", "-map", "1:a", "-c:v", "copy", "-t", f"{seconds:.3f}"]
    reason = "no audio codec tried"
    for codec in ("copy", REENCODE.get(ext, "aac")):
        try:
            result = subprocess.run(command + ["-c:a", codec, os.fspath(out)], capture_output=True,
                                    text=True, errors="replace", timeout=TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as exc:
            reason = str(exc)
            break
        if result.returncode == 0:
            return None
        lines = result.stderr.strip().splitlines()
        reason = lines[-1] if lines else f"ffmpeg exited with {result.returncode}"
    try:
        os.remove(out)
    except FileNotFoundError:
        pass
    return reason
