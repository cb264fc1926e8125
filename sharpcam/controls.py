"""Controls: the live settings (mode, strength, mirror) and the hotkeys that change them.

Keys come from the preview window or from the terminal that runs sharpcam;
both only enqueue them, and the pipeline applies the queue at the start of
the next frame, so a frame is never processed with half-changed settings.
"""
from __future__ import annotations

import os
import queue
import select
import sys
import threading
from dataclasses import dataclass, replace

MODES = ("on", "off", "split")
STRENGTH_MIN, STRENGTH_MAX, STRENGTH_STEP = 0.0, 2.0, 0.1
QUIT_KEYS = frozenset({"q", "Q", "\x1b", "\x03"})
HOTKEY_HELP = "keys: space on/off  s split  +/- strength  m mirror  q quit"


@dataclass(frozen=True)
class ControlState:
    mode: str = "on"
    strength: float = 1.0
    mirror: bool = False

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if not STRENGTH_MIN <= self.strength <= STRENGTH_MAX:
            raise ValueError(f"strength must be in [{STRENGTH_MIN:g}, {STRENGTH_MAX:g}], "
                             f"not {self.strength:g}")

    def describe(self) -> str:
        return f"mode={self.mode} strength={self.strength:.1f}" + (" mirror" if self.mirror else "")


def apply_key(state: ControlState, key: str) -> ControlState:
    """The state after one key press; unknown keys change nothing."""
    if key == " ":
        return replace(state, mode="on" if state.mode == "off" else "off")
    if key in ("s", "S"):
        return replace(state, mode="on" if state.mode == "split" else "split")
    if key in ("+", "="):
        return replace(state, strength=round(min(STRENGTH_MAX, state.strength + STRENGTH_STEP), 1))
    if key in ("-", "_"):
        return replace(state, strength=round(max(STRENGTH_MIN, state.strength - STRENGTH_STEP), 1))
    if key in ("m", "M"):
        return replace(state, mirror=not state.mirror)
    return state


class Controls:
    """Thread-safe holder of the current ControlState plus a quit flag.

    ``press`` may be called from any thread; ``next_frame`` (the sharpening thread
    only) applies the keys pressed since the previous frame and returns the
    state to use for this one.
    """

    def __init__(self, state: ControlState = ControlState()):
        self._state = state
        self._keys: "queue.SimpleQueue[str]" = queue.SimpleQueue()
        self.quit = threading.Event()

    @property
    def state(self) -> ControlState:
        return self._state

    def press(self, key: str) -> None:
        if key in QUIT_KEYS:
            self.quit.set()
        else:
            self._keys.put(key)

    def next_frame(self) -> ControlState:
        state = self._state
        while True:
            try:
                state = apply_key(state, self._keys.get_nowait())
            except queue.Empty:
                break
        self._state = state
        return state


class TerminalKeys:
    """Reads single key presses from a terminal in cbreak mode while in use.

    Does nothing when the stream is not a TTY (piped, redirected, CI), so
    sharpcam never steals input it was not meant to read.  The terminal's
    settings are restored on exit, including after Ctrl-C.
    """

    def __init__(self, controls: Controls, stream=None):
        self._controls = controls
        self._stream = sys.stdin if stream is None else stream
        self._stop = threading.Event()
        self._thread = None
        self._saved = None
        self.active = False

    def _fileno(self):
        try:
            fd = self._stream.fileno() if hasattr(self._stream, "fileno") else int(self._stream)
        except (OSError, ValueError):
            return None
        return fd if os.isatty(fd) else None

    def __enter__(self) -> "TerminalKeys":
        fd = self._fileno()
        if fd is None:
            return self
        if os.name == "nt":
            target = self._read_windows
        else:
            import termios  # POSIX only, like tty: not at the top, where Windows would fail
            import tty
            self._saved = (fd, termios.tcgetattr(fd))
            # cbreak keeps ISIG, so Ctrl-C still raises KeyboardInterrupt in the main thread.
            tty.setcbreak(fd)
            target = self._read_posix
        self.active = True
        self._thread = threading.Thread(target=target, args=(fd,), name="sharpcam-keys", daemon=True)
        self._thread.start()
        return self

    def _read_posix(self, fd: int) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([fd], [], [], 0.1)
            if not ready:
                continue
            try:
                data = os.read(fd, 64)
            except OSError:
                return
            if not data:
                return
            for key in data.decode("utf-8", "ignore"):
                self._controls.press(key)

    def _read_windows(self, fd: int) -> None:
        import msvcrt  # Windows only: not at the top, where other systems would fail
        while not self._stop.wait(0.02):
            while msvcrt.kbhit():
                self._controls.press(msvcrt.getwch())

    def __exit__(self, *exc) -> bool:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        if self._saved is not None:
            import termios  # POSIX only; _saved is set only there
            fd, attrs = self._saved
            termios.tcsetattr(fd, termios.TCSADRAIN, attrs)
            self._saved = None
        self.active = False
        return False
