"""Explicit lifetimes: the ``with`` block every source, sink and engine shares.

As with pyvirtualcam's ``Camera``, ``open()`` acquires what the object needs (a camera,
a window, a file, an onnxruntime session) and returns the object, ``close()`` releases it
and may be called any number of times, and ``with thing:`` does both, closing on any
exception without swallowing it.
"""
from __future__ import annotations


class Lifetime:
    """Base of everything sharpcam opens and must close; subclasses override open and close."""

    def open(self):
        """Acquire what is needed and return self; objects ready when made keep this one."""
        return self

    def close(self) -> None:
        """Release what ``open`` acquired; must do nothing when already closed."""

    def __enter__(self):
        return self.open()

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.close()
        return False
