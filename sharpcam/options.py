"""The options ``sharpcam`` and ``sharpcam bench`` share, and the engine they ask for.

Owns the argparse value types both commands use, the model options (``--model``,
``--device``, ``--threads``, ``--precision``) and ``open_engine_from``, the one place
that turns those options into an engine.  A problem the user can fix is a
``UsageError``, which the command prints as one ``sharpcam: error:`` line.
"""
from __future__ import annotations

import argparse
import os
from typing import Callable

from . import DEFAULT_MODEL


class UsageError(Exception):
    """A problem the user can fix; printed as one `sharpcam: error:` line."""


def bounded_float(low: float, high: float, not_a_number: str, out_of_range: str):
    """An argparse type: a float in [low, high], else one of the two messages."""
    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(not_a_number) from None
        if not low <= number <= high:
            raise argparse.ArgumentTypeError(out_of_range)
        return number
    return parse


def positive_int(value: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a positive integer") from None
    if n < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return n


def thread_count(value: str):
    """An argparse type: "auto" or a positive integer."""
    if value == "auto":
        return value
    try:
        return positive_int(value)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError("must be a positive integer or auto") from None


MAX_FRAMES_IN_FLIGHT = 8


def frames_in_flight(value: str):
    """An argparse type: "auto" or how many frames are sharpened at once, 1 to
    MAX_FRAMES_IN_FLIGHT."""
    if value == "auto":
        return value
    try:
        n = positive_int(value)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError("must be auto or a number of frames") from None
    if n > MAX_FRAMES_IN_FLIGHT:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_FRAMES_IN_FLIGHT} "
                                         "(each frame in flight holds its own buffers)")
    return n


def add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=DEFAULT_MODEL, metavar="PATH",
                   help="student ONNX model (default: the one shipped with sharpcam)")
    g.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                   help="execution provider: auto picks CUDA, DirectML, CoreML or OpenVINO when installed")
    g.add_argument("--threads", type=thread_count, default="auto", metavar="N|auto",
                   help="CPU threads per frame; auto (default): one while frames go two at once "
                        "(--frames-in-flight); one at a time, one or the cores less one for the "
                        "call app (at most 4; all of them below 4 cores) when one cannot keep up "
                        "with the camera, measured at start")
    g.add_argument("--frames-in-flight", type=frames_in_flight, default="auto", metavar="N|auto",
                   help="sharpen N frames at once, each on its own threads (one each with "
                        "--threads auto): more frames/s where one frame cannot keep the cores "
                        "busy, at one frame's time more latency; auto (default): two on a CPU "
                        "with two or more cores, else one")
    g.add_argument("--precision", choices=("auto", "fp32", "int8"), default="auto",
                   help="fp32 model or its INT8 sibling (NAME.int8.onnx); auto (default) = "
                        "the faster, measured at start")
    g.add_argument("--receptive-radius", type=int, default=None, metavar="PX",
                   help=argparse.SUPPRESS)  # for foreign models without SharpCam metadata
    g.add_argument("--size-multiple", type=int, default=None, metavar="N", help=argparse.SUPPRESS)


def frames_in_flight_for(args: argparse.Namespace) -> int:
    """``--frames-in-flight`` resolved. Under auto, two frames at once on a CPU with two or
    more cores, whatever ``--threads`` gives each: one frame on two threads keeps about 1.4
    of them busy, and a second frame fills the gaps (on two threads each, 52–68 frames/s
    at 720p on this project's 2-core CPU against 33–42 one at a time). While one frame
    keeps up with the camera the second lane sits idle, at no CPU cost."""
    if args.frames_in_flight != "auto":
        return args.frames_in_flight
    cpu = args.device != "gpu"
    return 2 if cpu and (os.cpu_count() or 1) >= 2 else 1


def engine_threads(args: argparse.Namespace):
    """The ``--threads`` the engine gets: frames in flight are there to keep one core busy
    each, so under ``auto`` they run one thread each."""
    return 1 if args.threads == "auto" and frames_in_flight_for(args) > 1 else args.threads


def open_engine_from(args: argparse.Namespace, notify: Callable[[str], None]):
    """The engine (an Engine, or an EngineChoice of several) that the model options ask for;
    ``notify`` hears why an INT8 sibling was passed over. Raises UsageError."""
    # Imported here so that `sharpcam --help` and usage errors do not wait for onnxruntime.
    from .engine import ModelError
    from .engine_choice import open_engine

    if os.path.abspath(args.model) == os.path.abspath(DEFAULT_MODEL) and not os.path.isfile(DEFAULT_MODEL):
        raise UsageError(f"the bundled model is missing from this installation ({DEFAULT_MODEL}); "
                         "reinstall sharpcam, or pass --model PATH to a student .onnx")
    try:
        return open_engine(args.model, args.precision, notify=notify, device=args.device,
                           threads=engine_threads(args), receptive_radius=args.receptive_radius,
                           size_multiple=args.size_multiple)
    except ModelError as exc:
        raise UsageError(str(exc)) from None
