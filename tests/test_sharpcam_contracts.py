"""Every source and sink in sharpcam meets its written contract (sources.Source, sinks.Sink)."""
import importlib
import inspect
import pkgutil
import typing

import numpy as np
import pytest

import sharpcam
from conftest import write_clip
from sharpcam.sinks import KeySink, Sink
from sharpcam.sources import Source

FRAME = np.zeros((24, 32, 3), np.uint8)


def made_here(suffix):
    """{name: class} of every class in the sharpcam package whose name ends in ``suffix``,
    the protocols themselves left out."""
    found = {}
    for module_info in pkgutil.iter_modules(sharpcam.__path__):
        if module_info.name == "__main__":
            continue  # running it starts the command
        module = importlib.import_module(f"sharpcam.{module_info.name}")
        for name, value in vars(module).items():
            if (inspect.isclass(value) and value.__module__ == module.__name__
                    and name.endswith(suffix) and typing.Protocol not in value.__bases__):
                found[name] = value
    return found


def members(protocol):
    """The attributes and methods a protocol asks for."""
    methods = [name for name, value in vars(protocol).items()
               if inspect.isfunction(value) and value.__qualname__.startswith(protocol.__name__ + ".")]
    return sorted(set(protocol.__annotations__) | set(methods))


def test_protocols_name_what_the_pipeline_uses():
    # Guards the member lists below against an empty or misspelt protocol.
    assert members(Source) == sorted([
        "__enter__", "__exit__", "close", "describe", "finite", "fps", "frame_count", "height",
        "open", "read", "reopen", "self_paced", "width"])
    assert members(Sink) == sorted(["__enter__", "__exit__", "close", "describe", "open", "send"])


def make_source(name, tmp_path):
    from sharpcam import bench, sources
    return {
        "CameraSource": lambda: sources.CameraSource(0),
        "VideoFileSource": lambda: sources.VideoFileSource(write_clip(tmp_path / "c.avi", frames=2)),
        "DemoSource": lambda: sources.DemoSource(width=32, height=24),
        "_RepeatSource": lambda: bench._RepeatSource([FRAME, FRAME]),
    }[name]()


def make_sink(name, tmp_path):
    from sharpcam import bench, sinks
    return {
        "VirtualCameraSink": lambda: sinks.VirtualCameraSink(32, 24, 30.0),
        "PreviewSink": lambda: sinks.PreviewSink(lambda key: None),
        "VideoFileSink": lambda: sinks.VideoFileSink(tmp_path / "o.avi", 32, 24, 30.0),
        "_CopySink": lambda: bench._CopySink(),
        "FrameFolderSink": lambda: sinks.FrameFolderSink(tmp_path / "frames"),
    }[name]()


SOURCES = ["CameraSource", "VideoFileSource", "DemoSource", "_RepeatSource"]
SINKS = ["VirtualCameraSink", "PreviewSink", "VideoFileSink", "_CopySink", "FrameFolderSink"]


def test_the_lists_below_name_every_source_and_sink():
    # A new source or sink must be added to the checks here, not slip past them.
    assert sorted(made_here("Source")) == sorted(SOURCES)
    assert sorted(made_here("Sink")) == sorted(SINKS)


# Those that open without hardware (no camera, display or virtual-camera driver).
OPENS_HERE = {"VideoFileSource", "DemoSource", "_RepeatSource", "VideoFileSink", "_CopySink",
              "FrameFolderSink"}


@pytest.mark.parametrize("name", SOURCES)
def test_source_meets_the_source_protocol(name, tmp_path):
    source = make_source(name, tmp_path)
    assert [m for m in members(Source) if not hasattr(source, m)] == []
    assert isinstance(source, Source)
    assert isinstance(source.frame_count, int) and source.frame_count >= 0
    source.close()  # closing is harmless unopened...
    if name in OPENS_HERE:
        with source as opened:
            assert opened is source and opened.read().shape == (source.height, source.width, 3)
    source.close()  # ...and closed already


@pytest.mark.parametrize("name", SINKS)
def test_sink_meets_the_sink_protocol(name, tmp_path):
    sink = make_sink(name, tmp_path)
    assert [m for m in members(Sink) if not hasattr(sink, m)] == []
    assert isinstance(sink, Sink)
    sink.close()
    if name in OPENS_HERE:
        with sink as opened:
            assert opened is sink
            opened.send(FRAME)
    sink.close()


def test_with_closes_on_any_error_and_lets_it_through():
    from sharpcam.lifetime import Lifetime

    class Counted(Lifetime):
        opened = closed = 0

        def open(self):
            self.opened += 1
            return self

        def close(self):
            self.closed += 1

    thing = Counted()
    with pytest.raises(RuntimeError, match="camera unplugged"):
        with thing as inside:
            assert inside is thing and (thing.opened, thing.closed) == (1, 0)
            raise RuntimeError("camera unplugged")
    assert (thing.opened, thing.closed) == (1, 1)


def test_closed_sources_and_engines_hold_nothing(tmp_path, test_model):
    from sharpcam.engine import Engine, ModelError
    from sharpcam.sources import DemoSource, VideoFileSource
    with DemoSource(width=32, height=24) as demo, \
            VideoFileSource(write_clip(tmp_path / "c.avi", frames=2)) as clip:
        assert demo.read() is not None and clip.read() is not None
    assert demo.read() is None and clip.read() is None
    with Engine(test_model, device="cpu", threads=1) as engine:
        engine.run(np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(ModelError):
        engine.run(np.zeros((1, 3, 8, 8), np.float32))


def test_only_the_preview_takes_keys(tmp_path):
    takes_keys = [name for name in SINKS if isinstance(make_sink(name, tmp_path), KeySink)]
    assert takes_keys == ["PreviewSink"]
