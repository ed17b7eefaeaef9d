"""The error a user can fix (a missing file, a bad name or value): the CLI prints it as one line;
and the one-line warning of work that goes on without a part of its input."""

from __future__ import annotations

import sys
from collections.abc import Callable

from tqdm import tqdm

Warn = Callable[[str], None]


class UserError(Exception):
    """A problem the user can fix (bad config name, missing file, ...): printed without a trace."""


def warn_line(message: str) -> None:
    """A warning on stderr, written so that a running progress bar stays intact."""
    tqdm.write(message, file=sys.stderr)
