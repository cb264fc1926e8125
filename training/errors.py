"""The one exception the training library raises for a problem the user can fix.

Library modules (data, degradations, devices, checkpoints of a run) raise
``UsageError`` with one line that names the problem and the fix; each command's
``main`` runs under ``reported_as_exit`` and turns it into ``error: <line>`` and a
non-zero exit, so the commands print no traceback and the modules stay usable from
Python and tests.
"""
from __future__ import annotations

import contextlib


class UsageError(Exception):
    """Bad input or a missing file; the message says what and how to fix it."""


@contextlib.contextmanager
def reported_as_exit():
    try:
        yield
    except UsageError as e:
        raise SystemExit(f"error: {e}") from None
