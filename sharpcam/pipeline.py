"""The pipeline: owns the capture thread and the loop that moves frames
source → sharpener → sinks, and reports what it does.  Input sinks (``--save-frames``)
get each source frame as it came, before sharpening.

Live mode runs three stages, each on its own thread:

- capture keeps only the newest frame in a one-slot buffer;
- sharpening takes whatever is newest, so when it is slower than the camera,
  frames are dropped rather than delayed and latency stays bounded;
- sending, on the thread that called ``run_live`` (a preview window must be
  drawn by the thread that made it), passes each result to the sinks while the
  next frame is already being sharpened, through a one-result hand-off: a
  frame's time is the slower of model and sinks, not their sum.

If the camera is lost, the sinks keep receiving the last frame with a "camera
lost" note while the capture thread reconnects with back-off.  File mode:
every frame in order, as fast as possible, with the same overlap: one thread
reads and sharpens, the calling thread sends (encodes).

With ``frames_in_flight`` N > 1 the sharpening stage hands each frame to one of N
lanes (`FrameLanes`) and takes the next while they work; results still reach the sinks
in the order the frames came.
"""
from __future__ import annotations

import collections
import queue
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import cv2
import numpy as np

from .controls import Controls
from .sharpen import Sharpener
from .sinks import KeySink, Sink
from .sources import Source

RECONNECT_DELAYS = (0.5, 1.0, 2.0, 4.0, 5.0)
LOST_NOTE = "camera lost - reconnecting"


@dataclass
class Summary:
    frames: int = 0
    seconds: float = 0.0
    model_ms: float = 0.0
    dropped: int = 0
    reconnects: int = 0
    latency_ms: float = 0.0  # live mode: capture to sinks, what sharpcam adds to the camera's own
    cpu_seconds: float = 0.0  # the whole process, every thread

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu(self) -> float:
        """Cores kept busy on average: CPU seconds per second."""
        return self.cpu_seconds / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        return (f"frames={self.frames} fps={self.fps:.1f} model_ms={self.model_ms:.1f} "
                f"cpu={self.cpu:.2f}")


class FrameSlot:
    """Holds only the newest frame; readers wait for one newer than they have seen."""

    def __init__(self):
        self._cond = threading.Condition()
        self._frame = None
        self._seq = 0

    def put(self, frame: np.ndarray, captured_at: float = 0.0) -> None:
        with self._cond:
            self._frame = (frame, captured_at)
            self._seq += 1
            self._cond.notify_all()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def newer_than(self, seq: int, timeout: float):
        """(seq, frame, captured_at) of the newest frame if newer than ``seq``, else None
        after ``timeout``."""
        with self._cond:
            if self._seq <= seq:
                self._cond.wait(timeout)
            if self._seq <= seq:
                return None
            return (self._seq,) + self._frame


class RateMeter:
    """Frames per second over a sliding window of recent events."""

    def __init__(self, window: float = 2.0, clock: Callable[[], float] = time.perf_counter):
        self._window, self._clock = window, clock
        self._times = []

    def tick(self) -> None:
        now = self._clock()
        self._times.append(now)
        while self._times and now - self._times[0] > self._window:
            self._times.pop(0)

    @property
    def rate(self) -> float:
        if len(self._times) < 2:
            return 0.0
        span = self._times[-1] - self._times[0]
        return (len(self._times) - 1) / span if span > 0 else 0.0


class CpuMeter:
    """The process's CPU use in cores (CPU seconds per wall second) over a sliding window.

    ``time.process_time`` counts every thread of the process, at nanosecond resolution
    where ``os.times`` ticks in 10 ms steps on Linux.
    """

    def __init__(self, window: float = 2.0, clock: Callable[[], float] = time.perf_counter,
                 cpu_clock: Callable[[], float] = time.process_time):
        self._window, self._clock, self._cpu_clock = window, clock, cpu_clock
        self._samples = collections.deque()

    def tick(self) -> None:
        now = self._clock()
        self._samples.append((now, self._cpu_clock()))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self._window:
            self._samples.popleft()

    @property
    def cores(self) -> float:
        if len(self._samples) < 2:
            return 0.0
        (wall0, cpu0), (wall1, cpu1) = self._samples[0], self._samples[-1]
        return (cpu1 - cpu0) / (wall1 - wall0) if wall1 > wall0 else 0.0


class StatusLine:
    """One status line: rewritten in place on a terminal, at most one line a second otherwise."""

    def __init__(self, stream=None, clock: Callable[[], float] = time.monotonic):
        self.stream = sys.stderr if stream is None else stream
        self._clock = clock
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._interval = 0.25 if self.tty else 1.0
        self._last = -1e9
        self._width = 0

    def update(self, text: str, force: bool = False) -> None:
        now = self._clock()
        if not force and now - self._last < self._interval:
            return
        self._last = now
        if self.tty:
            pad = max(0, self._width - len(text))
            self.stream.write("\r" + text + " " * pad)
            self._width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def note(self, text: str) -> None:
        """A line that stays (a warning), printed above the status line on a terminal."""
        if self.tty and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self._width = 0
            self._last = -1e9  # redraw the status line at the next update
        self.stream.write(text + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.tty and self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0


class Progress:
    """A progress bar for file mode (on a terminal; plain lines once a second otherwise)."""

    def __init__(self, total: int, status: StatusLine):
        self.total, self.status = total, status

    def update(self, done: int, fps: float, force: bool = False) -> None:
        if self.total and done <= self.total:
            frac = min(1.0, done / self.total)
            bar = "#" * int(frac * 30)
            text = f"[{bar:<30}] {done}/{self.total} frames {fps:.1f} fps"
        else:
            text = f"{done} frames {fps:.1f} fps"
        self.status.update(text, force=force)


def draw_lost_note(frame: np.ndarray) -> np.ndarray:
    out = frame.copy()
    h = out.shape[0]
    scale = max(0.4, h / 900)
    (tw, th), base = cv2.getTextSize(LOST_NOTE, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x, y = 10, h - 10
    cv2.rectangle(out, (x - 4, y - th - 6), (x + tw + 4, y + base), (0, 0, 0), cv2.FILLED)
    cv2.putText(out, LOST_NOTE, (x, y - 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                cv2.LINE_AA)
    return out


class FrameLanes:
    """Up to ``count`` frames sharpened at once, each by a lane of its own: a sharpener (its
    own tiler buffers and memory of the last frame) over the one shared engine, on a thread
    of its own; onnxruntime runs concurrent calls on one session.

    Why: a small model's operators are too short for a second intra-op thread to keep a
    second core busy (one 720p frame on two threads keeps about 1.4 busy), while two
    frames, one thread each, keep both: measured on this project's 2-core machine, INT8
    73 frames/s against 38. ``submit`` waits for a free lane, so no more than ``count``
    frames are ever in flight; the caller keeps the order by collecting the results in the
    order it submitted. The lane freed last is taken first: while one lane keeps up, every
    frame runs on the same thread and buffers, which stay warm in its core's cache (taken
    in turn, the lanes cost 0.3 cores more at 30 frames/s). With one lane the frame is
    sharpened on the calling thread, as before lanes existed.
    """

    def __init__(self, sharpener, count: int):
        if count < 1:
            raise ValueError(f"frames in flight must be at least 1, got {count}")
        self.sharpeners = [sharpener] + [sharpener.sibling() for _ in range(count - 1)]
        # Free lanes as (sharpener, inbox of its thread); one lane has no thread or inbox.
        self._free: "queue.LifoQueue" = queue.LifoQueue()
        self._threads = []
        for lane in reversed(self.sharpeners):  # the first sharpener on top
            inbox: Optional["queue.Queue"] = queue.Queue() if count > 1 else None
            if inbox is not None:
                thread = threading.Thread(target=self._serve, args=(lane, inbox), daemon=True,
                                          name=f"sharpcam-lane-{len(self._threads)}")
                self._threads.append((thread, inbox))
                thread.start()
            self._free.put((lane, inbox))

    def _serve(self, lane, inbox: "queue.Queue") -> None:
        while True:
            item = inbox.get()
            if item is None:
                return
            frame, state, future = item
            try:
                future.set_result((lane.process(frame, state), lane.model_ms))
            except BaseException as exc:
                future.set_exception(exc)
            finally:
                self._free.put((lane, inbox))

    def submit(self, frame: np.ndarray, state, stop: threading.Event) -> Optional[Future]:
        """A future of (sharpened frame, model ms); None if ``stop`` was set while waiting."""
        while True:
            try:
                lane, inbox = self._free.get(timeout=0.1)
                break
            except queue.Empty:
                if stop.is_set():
                    return None
        future: Future = Future()
        if inbox is None:
            try:
                future.set_result((lane.process(frame, state), lane.model_ms))
            finally:
                self._free.put((lane, inbox))
            return future
        # The source may hand out its buffer again for the next frame while this one is
        # still being sharpened.
        inbox.put((frame.copy(), state, future))
        return future

    def close(self) -> None:
        for _, inbox in self._threads:
            inbox.put(None)
        for thread, _ in self._threads:
            thread.join()


class Pipeline:
    """Moves frames from one source through the sharpener to every sink.

    ``run_live`` paces at the source rate with a capture thread;
    ``run_file`` processes every frame as fast as it can.  Both stop at
    ``max_frames`` processed frames, at the end of a finite source, or when
    the controls ask to quit.  ``input_sinks`` get every frame the source
    delivers and the pipeline takes, unsharpened, and never the 'camera lost' frame.
    ``frames_in_flight`` frames are sharpened at once (`FrameLanes`); above 1 the
    sharpener needs a ``sibling()``.
    """

    def __init__(self, source: Source, sharpener: Sharpener, controls: Controls, sinks: Sequence[Sink], *,
                 status: Optional[StatusLine] = None, max_frames: Optional[int] = None,
                 reconnect_delays: Sequence[float] = RECONNECT_DELAYS,
                 input_sinks: Sequence[Sink] = (), frames_in_flight: int = 1):
        self.source = source
        self.sharpener = sharpener
        self.frames_in_flight = frames_in_flight
        self._lanes: Optional[FrameLanes] = None
        self._last_model_ms = 0.0
        self.controls = controls
        self.sinks = list(sinks)
        self.input_sinks = list(input_sinks)
        self._key_sinks = [sink for sink in self.sinks if isinstance(sink, KeySink)]
        self.status = status
        self.max_frames = max_frames
        self.reconnect_delays = tuple(reconnect_delays)
        self.summary = Summary()
        self._size = (int(source.height), int(source.width))
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._ended = threading.Event()
        self._slot = FrameSlot()
        self._input_rate = RateMeter()
        self._output_rate = RateMeter()
        self._cpu = CpuMeter()
        self._cpu_start = 0.0
        self._model_ms_total = 0.0
        self._model_runs = 0
        self._sharpening_ended = threading.Event()
        self.capture_error: Optional[BaseException] = None
        self.processing_error: Optional[BaseException] = None

    @property
    def _frame_period(self) -> float:
        """Seconds between the source's frames (at most a second): how long a live
        stage waits for the next before it looks at why none came."""
        return 1.0 / max(1.0, float(self.source.fps))

    # -- shared per-frame work -------------------------------------------------
    def _submit(self, frame: np.ndarray) -> Optional[Future]:
        """Starts sharpening one frame (input sinks and controls in frame order, here);
        the future's result is (sharpened frame, model ms). None once stopping."""
        for sink in self.input_sinks:
            sink.send(frame)
        if frame.shape[:2] != self._size:
            # A camera that comes back at another resolution must not break the sinks,
            # which were opened for the first one.
            frame = cv2.resize(frame, (self._size[1], self._size[0]), interpolation=cv2.INTER_AREA)
        state = self.controls.next_frame()
        return self._lanes.submit(frame, state, self._stop)

    def _collect(self, pending: Future) -> Optional[np.ndarray]:
        """The sharpened frame, in submission order; None (and the error kept for the
        caller) if sharpening it failed."""
        try:
            out, model_ms = pending.result()
        except BaseException as exc:
            self.processing_error = exc
            self._stop.set()
            return None
        self._last_model_ms = model_ms
        if model_ms:
            self._model_ms_total += model_ms
            self._model_runs += 1
        return out

    def _send(self, out: np.ndarray) -> None:
        for sink in self.sinks:
            sink.send(out)
        self.summary.frames += 1
        self._output_rate.tick()

    def _start(self) -> float:
        self._lanes = FrameLanes(self.sharpener, self.frames_in_flight)
        self._cpu_start = time.process_time()
        return time.perf_counter()

    def _finish(self, start: float) -> Summary:
        if self._lanes is not None:
            self._lanes.close()
        self.summary.seconds = time.perf_counter() - start
        self.summary.cpu_seconds = time.process_time() - self._cpu_start
        self.summary.model_ms = self._model_ms_total / self._model_runs if self._model_runs else 0.0
        return self.summary

    def _done(self) -> bool:
        return self.controls.quit.is_set() or (
            self.max_frames is not None and self.summary.frames >= self.max_frames)

    # -- both modes: the sharpening thread hands results to the sending thread ----------
    def _hand_over(self, results: "queue.Queue", item) -> None:
        """Waits while the sinks send the result before: the model never gets more than a
        frame ahead of what the sinks have sent."""
        while not self._stop.is_set():
            try:
                results.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _start_sharpening(self, work: Callable[["queue.Queue"], None]) -> tuple:
        results: "queue.Queue" = queue.Queue(maxsize=1)

        def sharpen() -> None:
            try:
                work(results)
            except BaseException as exc:  # surfaced by run_file / run_live in the calling thread
                self.processing_error = exc
            finally:
                self._sharpening_ended.set()

        thread = threading.Thread(target=sharpen, name="sharpcam-sharpen", daemon=True)
        thread.start()
        return thread, results

    def _more_to_sharpen(self, processed: int) -> bool:
        # Stops at max_frames itself: a frame sharpened but never sent would still have
        # reached the input sinks (--save-frames).
        return not self._stop.is_set() and (self.max_frames is None or processed < self.max_frames)

    # -- file mode ---------------------------------------------------------------
    def _sharpen_file(self, results: "queue.Queue") -> None:
        """Every frame, read and sharpened in order."""
        processed = 0
        while self._more_to_sharpen(processed):
            frame = self.source.read()
            if frame is None:
                break
            pending = self._submit(frame)
            if pending is None:
                break
            processed += 1
            self._hand_over(results, pending)

    def run_file(self, progress: Optional[Progress] = None) -> Summary:
        start = self._start()
        sharpening, results = self._start_sharpening(self._sharpen_file)
        try:
            while not self._done():
                try:
                    pending = results.get(timeout=0.1)
                except queue.Empty:
                    if self._sharpening_ended.is_set() and results.empty():
                        break
                    continue
                out = self._collect(pending)
                if out is None:
                    break
                self._send(out)
                if progress is not None:
                    progress.update(self.summary.frames, self._output_rate.rate)
        finally:
            self._stop.set()
            sharpening.join(timeout=5.0)
            self._finish(start)
            if progress is not None:
                progress.update(self.summary.frames, self.summary.fps, force=True)
                progress.status.finish()
        if self.processing_error is not None:
            raise self.processing_error
        return self.summary

    # -- live mode ---------------------------------------------------------------
    def _capture(self) -> None:
        try:
            interval = 0.0 if self.source.self_paced else 1.0 / self.source.fps
            # A camera's read() blocks until its next frame, but a frozen driver or a virtual
            # source with nothing new returns at once: self-paced sources are read at most
            # twice per frame period, so such a source cannot make this loop spin a core.
            min_gap = 0.5 * self._frame_period if self.source.self_paced else 0.0
            due, last_read = time.perf_counter(), float("-inf")
            while not self._stop.is_set():
                if min_gap:
                    gap = last_read + min_gap - time.perf_counter()
                    if gap > 0 and self._stop.wait(gap):
                        break
                    last_read = time.perf_counter()
                try:
                    frame = self.source.read()
                except Exception:
                    frame = None  # a driver error mid-call is a lost camera, not a crash
                if frame is None:
                    if self.source.finite:
                        break
                    self._reconnect()
                    due = time.perf_counter()
                    continue
                self._slot.put(frame, time.perf_counter())
                self._input_rate.tick()
                if interval:
                    due += interval
                    delay = due - time.perf_counter()
                    if delay > 0:
                        self._stop.wait(delay)
                    elif delay < -interval:
                        due = time.perf_counter()  # fell behind: do not burst to catch up
        except BaseException as exc:  # surfaced by run_live in the main thread
            self.capture_error = exc
        finally:
            self._ended.set()
            self._slot.wake()

    def _reconnect(self) -> None:
        self.lost.set()
        self._slot.wake()
        attempt = 0
        while not self._stop.is_set():
            delay = self.reconnect_delays[min(attempt, len(self.reconnect_delays) - 1)]
            attempt += 1
            if self._stop.wait(delay):
                return
            try:
                ok = self.source.reopen()
            except Exception:
                ok = False
            if ok:
                self.summary.reconnects += 1
                self.lost.clear()
                return

    def _status_text(self, state) -> str:
        src = self.source
        self._cpu.tick()
        text = (f"in {src.width}x{src.height} {self._input_rate.rate:4.1f} fps | "
                f"out {self._output_rate.rate:4.1f} fps | cpu {self._cpu.cores:.1f} | "
                f"model {self._last_model_ms:5.1f} ms | dropped {self.summary.dropped} | "
                f"{state.describe()}")
        if self.lost.is_set():
            text += " | camera lost, reconnecting"
        return text

    def _sharpen_live(self, results: "queue.Queue") -> None:
        """The newest captured frame each time; frames that came meanwhile are dropped."""
        seen = processed = 0
        while self._more_to_sharpen(processed):
            item = self._slot.newer_than(seen, timeout=self._frame_period)
            if item is None:
                if self._ended.is_set():
                    break
                if self.lost.is_set():
                    try:  # wake the sending thread: the 'camera lost' note goes out now
                        results.put_nowait(None)
                    except queue.Full:
                        pass
                continue
            seq, frame, captured_at = item
            self.summary.dropped += seq - seen - 1
            seen = seq
            pending = self._submit(frame)
            if pending is None:
                break
            processed += 1
            self._hand_over(results, (pending, captured_at))

    def run_live(self) -> Summary:
        start = self._start()
        capture = threading.Thread(target=self._capture, name="sharpcam-capture", daemon=True)
        capture.start()
        sharpening, results = self._start_sharpening(self._sharpen_live)
        latency_total = 0.0
        last_out = None
        lost_frame = None
        try:
            while not self._done():
                try:
                    result = results.get(timeout=self._frame_period)
                except queue.Empty:
                    result = None
                if result is None:  # no fresh frame this period (or the camera was just lost)
                    if self._sharpening_ended.is_set() and results.empty():
                        break
                    if self.lost.is_set() and last_out is not None:
                        # Keep the virtual camera alive: apps drop a camera that stops sending.
                        if lost_frame is None:
                            lost_frame = draw_lost_note(last_out)
                        for sink in self.sinks:
                            sink.send(lost_frame)
                    self._poll_idle_sinks()
                    if self.status is not None:
                        self.status.update(self._status_text(self.controls.state))
                    continue
                pending, captured_at = result
                out = self._collect(pending)
                if out is None:
                    break
                lost_frame = None
                self._send(out)
                last_out = out
                latency_total += time.perf_counter() - captured_at
                if self.status is not None:
                    self.status.update(self._status_text(self.controls.state))
        finally:
            self._stop.set()
            self._slot.wake()
            sharpening.join(timeout=5.0)
            capture.join(timeout=5.0)
            if self.status is not None:
                self.status.update(self._status_text(self.controls.state), force=True)
                self.status.finish()
            self._finish(start)
            if self.summary.frames:
                self.summary.latency_ms = latency_total / self.summary.frames * 1000.0
        for error in (self.processing_error, self.capture_error):
            if error is not None:
                raise error
        return self.summary

    def _poll_idle_sinks(self) -> None:
        for sink in self._key_sinks:
            sink.poll_keys()
