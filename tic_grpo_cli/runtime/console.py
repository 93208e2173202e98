"""The process's terminal: one rich Console, and the logging handler that prints through it."""

from __future__ import annotations

import functools
import logging
import sys
from typing import Any


@functools.cache
def console() -> Any:
    """The process's one rich Console on stdout: log lines, tables and the progress bar all
    print through it, so a live bar stays below what is printed above it."""
    from rich.console import Console

    return Console()


def console_handler() -> logging.Handler:
    """Rich output on a terminal, plain lines otherwise (CI, pipes, files)."""
    if sys.stdout.isatty():
        from rich.logging import RichHandler

        return RichHandler(console=console(), show_path=False, rich_tracebacks=False, markup=False)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(levelname)s] %(message)s", "%H:%M:%S"))
    return handler
