"""The ``sharpcam`` command: argument parsing, setup order and error reporting.

Everything that can be checked before capture starts is checked first (output
path, display for the preview, model contract), so a bad setup costs the
user one clear line and no traceback.  ``sharpcam bench`` is a subcommand.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from typing import Optional, Sequence

from . import __version__
from .audio import find_ffmpeg, has_audio
from .controls import HOTKEY_HELP, MODES, ControlState, Controls, TerminalKeys
from .options import (UsageError, add_model_options, bounded_float, frames_in_flight_for, open_engine_from,
                      positive_int)


def _tile(value: str):
    if value == "auto":
        return None
    try:
        tile = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a pixel size, 0 (whole frame) or auto") from None
    if tile < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return tile


_strength = bounded_float(0.0, 2.0, "must be a number in [0, 2]", "must be in [0, 2]")


_fps = bounded_float(1.0, 240.0, "must be a number of frames per second", "must be between 1 and 240")


SAVE_EVERY, SAVE_MAX = 15, 300


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sharpcam",
        description="Real-time learned sharpening for your webcam, sent to a virtual camera "
                    "named SharpCam. `sharpcam bench` measures speed on this machine.",
        epilog=HOTKEY_HELP + " (in the terminal or the preview window)")
    p.add_argument("--version", action="version", version=f"sharpcam {__version__}")
    src = p.add_argument_group("source (default: webcam 0)")
    src.add_argument("--camera", default="0", metavar="DEV", help="webcam index or device path")
    src.add_argument("--input", metavar="FILE", help="read a video file instead of a webcam")
    src.add_argument("--loop", action="store_true", help="loop the --input file")
    src.add_argument("--demo", action="store_true",
                     help="built-in demo: a moving, webcam-degraded photo; needs no hardware")
    src.add_argument("--list-cameras", action="store_true", help="list webcams and exit")
    src.add_argument("--width", type=positive_int, default=1280, help="requested width (default 1280)")
    src.add_argument("--height", type=positive_int, default=720, help="requested height (default 720)")
    src.add_argument("--fps", type=_fps, default=30.0, help="requested frame rate (default 30)")
    src.add_argument("--no-mjpg", dest="mjpg", action="store_false",
                     help="do not ask the webcam for MJPG (which allows higher rates over USB)")
    src.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    add_model_options(p)
    proc = p.add_argument_group("processing")
    proc.add_argument("--tile", type=_tile, default=None, metavar="N",
                      help="tile size in pixels, 0 = whole frame, auto (default) = the faster, measured at start "
                           "(a model that reads the whole frame, like the bundled one, always runs whole)")
    proc.add_argument("--strength", type=_strength, default=1.0, help="0..2, default 1")
    proc.add_argument("--mode", choices=MODES, default="on", help="start mode (default on)")
    proc.add_argument("--mirror", action="store_true", help="mirror the image")
    out = p.add_argument_group("output")
    out.add_argument("--vcam", dest="vcam", action="store_true", default=None,
                     help="send to the virtual camera (default unless making a file from --input/--demo)")
    out.add_argument("--no-vcam", dest="vcam", action="store_false", help="do not open a virtual camera")
    out.add_argument("--cam-device", metavar="NAME", help="virtual camera device, e.g. /dev/video10")
    out.add_argument("--preview", action="store_true", help="show a preview window")
    out.add_argument("--output", metavar="FILE",
                     help="also write the result to a video file (with the sound of --input, given ffmpeg)")
    out.add_argument("--max-frames", type=positive_int, default=None, metavar="N",
                     help="stop after N frames")
    save = p.add_argument_group("saving camera frames (material to tune SharpCam to your camera)")
    save.add_argument("--save-frames", metavar="DIR",
                      help="also save frames as they come from the camera (or --input/--demo), "
                           "before sharpening, as PNG files in DIR (made if missing)")
    save.add_argument("--save-every", type=positive_int, default=None, metavar="N",
                      help=f"save every Nth frame (default {SAVE_EVERY}: two a second at 30 fps)")
    save.add_argument("--save-max", type=positive_int, default=None, metavar="M",
                      help=f"stop saving after M files (default {SAVE_MAX})")
    return p


def error(message: str, code: int = 1) -> int:
    print(f"sharpcam: error: {message}", file=sys.stderr)
    return code


def note(message: str) -> None:
    print(f"sharpcam: {message}", file=sys.stderr)


def list_cameras_command() -> int:
    from .sources import list_cameras  # here, not at the top: it loads OpenCV, which --help needs not
    cams = list_cameras()
    if not cams:
        print("no cameras found (none connected, or all in use); try `sharpcam --demo`")
        return 1
    for device, desc in cams:
        print(f"{device}: {desc}")
    return 0


DEMO_FILE_FRAMES = 300

# Peak memory of a whole-frame run of the bundled student with the demo source measured
# ~120 bytes per pixel (146 MB at 640x480, 354 MB at 1920x1080); with headroom:
BYTES_PER_PIXEL = 160


def available_memory() -> Optional[int]:
    """Bytes the system can still give this process, where it says (Linux, most Unixes)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def frame_memory_problem(what: str, width: int, height: int) -> Optional[str]:
    """Why frames of this size would not fit in free memory, or None (also when unknown)."""
    free = available_memory()
    need = width * height * BYTES_PER_PIXEL
    if free is None or need <= free:
        return None
    return (f"{what} {width}x{height} needs about {need / 2**30:.1f} GB of memory and "
            f"{free / 2**30:.1f} GB is free; use a smaller --width/--height (1280x720 needs "
            f"{1280 * 720 * BYTES_PER_PIXEL / 2**30:.2f} GB)")


def _quit_on_sigterm(controls: Controls, stack: contextlib.ExitStack):
    """A service manager's stop or `kill` (SIGTERM) ends the run as cleanly as `q` does:
    sinks are closed, so a recording keeps its frames. Returns an Event set by the signal."""
    terminated = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        return terminated

    def stop(signum, frame):
        terminated.set()
        controls.quit.set()

    previous = signal.signal(signal.SIGTERM, stop)
    stack.callback(signal.signal, signal.SIGTERM, previous)
    return terminated


def sound_for_output(args) -> tuple:
    """(audio_from, ffmpeg) for --output: the --input file and the ffmpeg that carries its
    sound into the output, or (None, None); says so when the sound is dropped."""
    if not (args.output and args.input):
        return None, None  # the demo and cameras have no sound
    if args.loop:
        note(f"--loop: {args.output} gets the pictures only; the sound of {args.input} is not looped")
        return None, None
    ffmpeg = find_ffmpeg()
    if ffmpeg is None:
        note(f"no ffmpeg here: {args.output} gets the pictures only, any sound in {args.input} is "
             'dropped (`pip install "sharpcam[audio]"` keeps it)')
        return None, None
    if not has_audio(ffmpeg, args.input):
        return None, None
    note(f"the sound of {args.input} goes into {args.output}")
    return args.input, ffmpeg


def _same_file(a: str, b: str) -> bool:
    """Whether two paths name one file, however spelled (relative, via links, hard links)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet
        return False


def check_arguments(args) -> bool:
    """The checks that need nothing opened, so a bad command line costs one line and no
    waiting; returns whether this is a file-to-file run (no live sink asked for)."""
    from .sinks import check_frame_folder, check_output_path, display_problem

    if args.input and args.demo:
        raise UsageError("use either --input or --demo, not both")
    if args.loop and not args.input:
        raise UsageError("--loop only applies to --input FILE")
    for option, value in (("--save-every", args.save_every), ("--save-max", args.save_max)):
        if value is not None and not args.save_frames:
            raise UsageError(f"{option} only applies with --save-frames DIR")
    if args.output:
        problem = check_output_path(args.output)
        if problem:
            raise UsageError(problem)
        if args.input and _same_file(args.input, args.output):
            raise UsageError(f"--output {args.output} is the --input file; sharpcam would overwrite "
                             "the video it reads: choose another output name")
    if args.preview:
        problem = display_problem()
        if problem:
            raise UsageError(problem)
    if args.save_frames:
        problem = check_frame_folder(args.save_frames)
        if problem:
            raise UsageError(problem)
    return bool(args.output and (args.input or args.demo) and not args.preview and not args.vcam)


def make_source(args):
    """The source the arguments name, not yet opened."""
    from .sources import CameraSource, DemoSource, VideoFileSource

    if args.demo:
        # The demo renders at the size asked for: check it before its buffers are allocated.
        problem = frame_memory_problem("--demo", args.width, args.height)
        if problem:
            raise UsageError(problem)
        return DemoSource(width=args.width, height=args.height, fps=args.fps, seed=args.seed)
    if args.input:
        return VideoFileSource(args.input, loop=args.loop)
    return CameraSource(args.camera, width=args.width, height=args.height, fps=args.fps, mjpg=args.mjpg)


def open_sinks(args, stack: contextlib.ExitStack, source, controls: Controls, status, file_mode: bool):
    """Opens every sink the arguments ask for on `stack`: (sinks of the sharpened frames,
    sinks of the camera's own frames, the virtual camera or None)."""
    from .sinks import (FrameFolderSink, PreviewSink, SinkError, VideoFileSink, VirtualCameraSink,
                        VirtualCameraUnavailable)

    # By default a live run feeds the virtual camera and a file-to-file run does not.
    want_vcam = (not file_mode) if args.vcam is None else args.vcam
    sinks, vcam = [], None
    if want_vcam:
        try:
            vcam = stack.enter_context(VirtualCameraSink(
                source.width, source.height, source.fps, device=args.cam_device))
            sinks.append(vcam)
            note(f"sending to {vcam.describe()} - pick it as the camera in your call app")
        except VirtualCameraUnavailable as exc:
            others = [name for name, on in (("the preview", args.preview), ("--output", args.output),
                                            ("--save-frames", args.save_frames)) if on]
            if not others:
                raise UsageError(str(exc)) from None
            note(f"{exc}\nsharpcam: continuing with " + " and ".join(others))
    if args.preview:
        sinks.append(stack.enter_context(PreviewSink(controls.press, on_close=controls.quit.set,
                                                     state=lambda: controls.state)))
    if args.output:
        audio_from, ffmpeg = sound_for_output(args)
        try:
            sinks.append(stack.enter_context(
                VideoFileSink(args.output, source.width, source.height, source.fps,
                              realtime=not file_mode, audio_from=audio_from,
                              ffmpeg=ffmpeg, warn=lambda message: note(f"warning: {message}"))))
        except SinkError as exc:
            raise UsageError(str(exc)) from None
    input_sinks = []
    if args.save_frames:
        frame_folder = FrameFolderSink(args.save_frames, every=args.save_every or SAVE_EVERY,
                                       limit=args.save_max or SAVE_MAX,
                                       warn=lambda message: status.note(f"sharpcam: warning: {message}"))

        def report_saved():
            if frame_folder.seen:  # not after a setup error, before any frame
                note(f"--save-frames: {frame_folder.saved} frames saved in {args.save_frames}")

        # Registered before the sink: the stack runs it after the sink has written its files.
        stack.callback(report_saved)
        try:
            input_sinks.append(stack.enter_context(frame_folder))
        except SinkError as exc:
            raise UsageError(str(exc)) from None
        note(f"saving to {frame_folder.describe()}")
    if not sinks and not input_sinks:
        raise UsageError("nothing to send frames to: drop --no-vcam, or add --preview or --output FILE")
    return sinks, input_sinks, vcam


def warmed_up_sharpener(engine, args, source, status, live: bool):
    """A Sharpener for the source's frame size, its tiling (and engine, where there is a
    choice) chosen and its first run done; ``live``: frames come at the source's rate, and
    the engine chosen must keep up with it."""
    from .engine import ModelError
    from .sharpen import Sharpener

    sharpener = Sharpener(engine, tile=args.tile,
                          warn=lambda message: status.note(f"sharpcam: warning: {message}"))
    try:
        # The first run is part of checking the model: a wrong output shape shows only here.
        frame_ms = 1000.0 / source.fps if live and source.fps > 0 else None
        warm_ms = sharpener.warm_up(source.height, source.width, frame_ms=frame_ms)
    except ModelError as exc:
        raise UsageError(str(exc)) from None
    for choice in (sharpener.choice_note, engine.choice_note):
        if choice:
            note(choice)
    note(f"tiling: {sharpener.tiler(source.height, source.width).describe()}; warm-up {warm_ms:.0f} ms")
    return sharpener


def interruption_note(args, source, vcam, summary) -> str:
    """What a Ctrl-C left behind: devices released, the recording kept or not made."""
    from .sources import CameraSource

    done = [f"{name} released" for name, used in
            (("camera", isinstance(source, CameraSource)), ("virtual camera", vcam is not None)) if used]
    if args.output:
        done.append(f"{args.output} kept with {summary.frames} frames" if summary.frames
                    else "no frame written, no file made")
    return "interrupted" + (": " + ", ".join(done) if done else "")


def run(args) -> int:
    # Here and in the set-up functions, not at the top: OpenCV and onnxruntime take about a
    # third of a second to load, which `sharpcam --help`, --version and usage errors should
    # not wait for.
    from .pipeline import Pipeline, Progress, StatusLine
    from .quiet import quiet_native_logs
    from .sources import SourceError
    from .tiling import tile_problem

    quiet_native_logs()  # before OpenCV first uses FFmpeg: it reads the log level only then
    file_mode = check_arguments(args)

    engine = open_engine_from(args, notify=note)
    in_flight = frames_in_flight_for(args)
    note("model " + engine.describe() + (f"; {in_flight} at once" if in_flight > 1 else ""))
    if args.tile is not None:
        problem = tile_problem(args.tile, engine.receptive_radius, engine.size_multiple,
                               engine.reads_whole_frame)
        if problem:
            raise UsageError(problem)

    source = make_source(args)
    controls = Controls(ControlState(mode=args.mode, strength=args.strength, mirror=args.mirror))
    max_frames = args.max_frames
    if file_mode and args.demo and max_frames is None:
        max_frames = DEMO_FILE_FRAMES
        note(f"demo to file: {DEMO_FILE_FRAMES} frames (use --max-frames to change)")

    status = StatusLine()
    with contextlib.ExitStack() as stack:
        # Before anything is opened: a SIGTERM from here on closes what is open, in order.
        terminated = _quit_on_sigterm(controls, stack)
        try:
            stack.enter_context(source)
        except SourceError as exc:
            raise UsageError(str(exc)) from None
        note(source.describe())
        # A camera or a file decides its own size (a camera answers a request it cannot meet
        # with the nearest size it has): check what it delivers before the model allocates.
        what = f"--input {args.input}" if args.input else "--demo" if args.demo else f"camera {args.camera}"
        problem = frame_memory_problem(what, source.width, source.height)
        if problem:
            raise UsageError(problem)
        sinks, input_sinks, vcam = open_sinks(args, stack, source, controls, status, file_mode)
        # Warm-up (and the tiled/whole-frame measurement) after the sinks: setup errors first.
        sharpener = warmed_up_sharpener(engine, args, source, status, live=not file_mode)

        pipeline = Pipeline(source, sharpener, controls, sinks, status=status, max_frames=max_frames,
                            input_sinks=input_sinks, frames_in_flight=in_flight)
        interrupted = False
        # Keys work wherever sharpcam runs in a terminal (and the terminal stops echoing them).
        keys = stack.enter_context(TerminalKeys(controls))
        if keys.active or args.preview:
            note(HOTKEY_HELP)
        if file_mode:
            # A looping file has no end of its own: only --max-frames makes a total.
            total = 0 if args.loop else source.frame_count
            if max_frames:
                total = min(total, max_frames) if total else max_frames
            try:
                summary = pipeline.run_file(Progress(total, status))
            except KeyboardInterrupt:
                summary, interrupted = pipeline.summary, True
            print(summary.line(), flush=True)
            if terminated.is_set():
                # A batch job stopped early: the file is complete but shorter, and scripts can tell.
                note(f"stopped by SIGTERM; {args.output} holds the {summary.frames} frames written"
                     if summary.frames else "stopped by SIGTERM before any frame; no file written")
                return 128 + 15
        else:
            try:
                summary = pipeline.run_live()
            except KeyboardInterrupt:
                summary, interrupted = pipeline.summary, True
            note(f"stopped: {summary.line()} dropped={summary.dropped} "
                 f"latency_ms={summary.latency_ms:.1f}")
    # The with-block has closed every sink: a recording now has its final name.
    if interrupted:
        note(interruption_note(args, source, vcam, summary))
        return 130
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["bench"]:
            from .bench import bench_main  # here, not at the top: it loads OpenCV and onnxruntime
            return bench_main(argv[1:])
        args = build_parser().parse_args(argv)
        if args.list_cameras:
            return list_cameras_command()
        return run(args)
    except UsageError as exc:
        return error(str(exc))
    except KeyboardInterrupt:
        # Only during start-up (a run catches its own); the with-blocks closed what was open.
        print("", file=sys.stderr)
        note("interrupted during start-up")
        return 130


if __name__ == "__main__":
    sys.exit(main())
