"""Output paths checked before the work starts, and the file system errors a user can act on.

``check_output_dir`` / ``check_output_file`` run before any slow work: the path must be of the right
kind (a folder or a file name), its nearest existing folder must take a file (a probe file is
written and removed: that is what read-only mounts, permissions and quotas answer to, root
included) and have some space left. Files are then written with
:func:`gcnet.checkpoint.io.atomic_write` (a temporary file renamed over the target): a reader sees
the old file or the whole new one, never half.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from gcnet.checkpoint.io import atomic_write
from gcnet.errors import UserError

PathLike = str | os.PathLike
MIN_FREE_BYTES = 1 << 20  # below this a run would fail on its first checkpoint or json
USER_ERRNOS = frozenset(
    {  # the file system's answers a user can act on: one message, no traceback
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EROFS,
        errno.EEXIST,
        errno.EACCES,
        errno.EPERM,
        errno.ENOENT,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.ENAMETOOLONG,
        errno.EFBIG,
        errno.ENOTEMPTY,
    }
)


def is_user_os_error(err: BaseException) -> bool:
    """An OSError caused by the user's file system (full, read-only, missing, wrong kind)."""
    return isinstance(err, OSError) and err.errno in USER_ERRNOS


def describe_os_error(err: OSError) -> str:
    """``path: reason`` for an OSError (both paths of a rename)."""
    reason = err.strerror or str(err)
    if err.filename is None:
        return reason
    if err.filename2 is not None:
        return f"{err.filename} -> {err.filename2}: {reason}"
    return f"{err.filename}: {reason}"


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path.cwd()


def _check_folder_takes_files(folder: Path, target: Path) -> None:
    """Write and remove a probe file in ``folder``; check it has space left."""
    try:
        handle, probe = tempfile.mkstemp(prefix=".gcnet-probe-", dir=folder)
        try:
            os.write(handle, b"0")
        finally:
            os.close(handle)
            os.unlink(probe)
    except OSError as err:
        raise UserError(f"{target}: cannot write in {folder} ({err.strerror or err})") from None
    free = shutil.disk_usage(folder).free
    if free < MIN_FREE_BYTES:
        raise UserError(f"{target}: no space left on the device of {folder} ({free // 1024} KiB free)")


def _check_folder(folder: Path, target: Path) -> None:
    """``folder`` (``target`` itself or the folder of the file ``target``) is or can become a
    folder that takes files; the message names ``target``."""
    if folder.exists() and not folder.is_dir():
        raise UserError(
            f"{target}: "
            + ("exists and is not a directory" if folder == target else f"{folder} is a file, not a directory")
        )
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise UserError(f"{target}: cannot create {folder}, {existing} is a file")
    _check_folder_takes_files(existing, target)


def check_output_dir(path: PathLike) -> Path:
    """``path`` as a folder to write into: an existing folder, or one that can be created."""
    path = Path(path)
    _check_folder(path, path)
    return path


def check_output_file(path: PathLike) -> Path:
    """``path`` as a file to (over)write: not a folder, in a folder that exists or can be created."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a directory; give a file name")
    if path.exists():
        try:
            with open(path, "ab"):  # neither truncates nor changes it
                pass
        except OSError as err:
            raise UserError(f"{path}: cannot write it ({err.strerror or err})") from None
    _check_folder(path.parent, path)
    return path


@contextlib.contextmanager
def naming(path: PathLike) -> Iterator[None]:
    """An OSError raised inside without a file name (a failed ``write``) gets ``path``, so that its
    one-line message says which file could not be written."""
    try:
        yield
    except OSError as err:
        if err.filename is None and err.errno is not None:
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise


def write_json(path: PathLike, data: Any) -> Path:
    """``data`` as json at ``path``, atomically (folders created)."""
    text = json.dumps(data).encode("utf-8")

    def write(f: IO[bytes]) -> None:
        f.write(text)

    with naming(path):
        return atomic_write(path, write)
