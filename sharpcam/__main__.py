"""Lets ``python -m sharpcam`` work like the ``sharpcam`` command."""
import sys

from .cli import main

sys.exit(main())
