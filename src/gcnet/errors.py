"""The error a user can fix (a missing file, a bad name or value): the CLI prints it as one line."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix (bad config name, missing file, ...): printed without a trace."""
