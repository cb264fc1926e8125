"""Command-line options: a dataclass of defaults becomes an argparse parser.

Each command declares ``@dataclass class Options`` with typed fields; the field's
``metadata["help"]`` is its help text. ``bool`` fields get ``--x/--no-x``; list
fields take several values; ``Optional[...]`` fields default to None. A field with
``positional=True`` is a positional argument (required unless it has a default; a list
field takes one or more values), and
``short="-o"`` adds a short flag.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import typing


def _base_type(tp):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0])
    return tp


def command_name(cls) -> str:
    """``python -m training.distill`` for the class's module, also when it runs as __main__."""
    module = sys.modules.get(cls.__module__)
    spec = getattr(module, "__spec__", None)
    return f"python -m {spec.name if spec is not None else cls.__module__}"


def parse_options(cls, argv=None, description: str | None = None):
    hints = typing.get_type_hints(cls)
    parser = argparse.ArgumentParser(prog=command_name(cls), description=description or (cls.__doc__ or "").strip(),
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for field in dataclasses.fields(cls):
        flags = ["--" + field.name.replace("_", "-")]
        if "short" in field.metadata:
            flags.insert(0, field.metadata["short"])
        tp = _base_type(hints[field.name])
        if field.metadata.get("positional"):
            required = field.default is dataclasses.MISSING
            if typing.get_origin(tp) in (list, tuple):  # one or more values, all required
                parser.add_argument(field.name, type=typing.get_args(tp)[0], nargs="+",
                                    help=field.metadata.get("help", ""), metavar=field.metadata.get("metavar"))
                continue
            parser.add_argument(field.name, type=tp, help=field.metadata.get("help", ""),
                                metavar=field.metadata.get("metavar"),
                                **({} if required else dict(nargs="?", default=field.default)))
            continue
        default = (field.default if field.default is not dataclasses.MISSING
                   else field.default_factory())  # type: ignore[misc]
        kwargs = dict(default=default, help=field.metadata.get("help", ""), dest=field.name)
        if "metavar" in field.metadata:
            kwargs["metavar"] = field.metadata["metavar"]
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(tp) in (list, tuple):
            kwargs["type"] = typing.get_args(tp)[0]
            kwargs["nargs"] = field.metadata.get("nargs", "+")
        else:
            kwargs["type"] = tp
        if "choices" in field.metadata and tp is not bool:
            kwargs["choices"] = field.metadata["choices"]
        parser.add_argument(*flags, **kwargs)
    return cls(**vars(parser.parse_args(argv)))


def option(default, help: str, **metadata):
    """A dataclass field with help text (and optional choices/nargs/metavar/short/positional).

    ``default=dataclasses.MISSING`` makes a required field (for a positional argument)."""
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=dict(help=help, **metadata))
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default),
                                 metadata=dict(help=help, **metadata))
    return dataclasses.field(default=default, metadata=dict(help=help, **metadata))
