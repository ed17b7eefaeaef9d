"""Checkpoint URLs, the local download cache, and sha256 checks against the published file names."""

from __future__ import annotations

import hashlib
import os
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Optional
from urllib.parse import unquote, urlparse

from gcnet.checkpoint.io import CheckpointError, PathLike, atomic_write

# ImageNet initialisations named the way the original's configs name them (mmcv/mmengine hub).
PRETRAINED_URLS: dict[str, str] = {
    "torchvision://resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    "torchvision://resnet101": "https://download.pytorch.org/models/resnet101-63fe2227.pth",
    "open-mmlab://resnext101_32x4d":
        "https://download.openmmlab.com/pretrain/third_party/resnext101_32x4d-a5af3160.pth",
}
_SHA_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.pth?$")


def sha256_prefix_in_name(file_name: str) -> Optional[str]:
    """The hex digits closing ``<stem>-<hash>.pth``: the start of the file's sha256, as the
    original's publishing script names files (None when the name carries no hash)."""
    match = _SHA_IN_NAME.search(file_name)
    return None if match is None else match.group(1)


def default_cache_dir() -> Path:
    """``$GCNET_HOME`` if set, else ``~/.cache/gcnet/checkpoints``."""
    home = os.environ.get("GCNET_HOME")
    return Path(home).expanduser() if home else Path.home() / ".cache" / "gcnet" / "checkpoints"


def resolve_url(name: str) -> str:
    """http(s) URLs pass through; ``torchvision://resnet50``-style names and zoo names become URLs."""
    if name in PRETRAINED_URLS:
        return PRETRAINED_URLS[name]
    scheme = urlparse(name).scheme
    if scheme in ("http", "https", "file"):
        return name
    if "://" in name:
        raise CheckpointError(f"unknown checkpoint name {name!r}; known: {sorted(PRETRAINED_URLS)}")
    from gcnet.zoo import get_entry  # local import: the zoo imports this module

    return get_entry(name).url


def download(url: str, cache_dir: Optional[PathLike] = None, progress: bool = True) -> Path:
    """Fetch ``url`` once into the cache and return the local file; later calls reuse it offline.

    The download goes to a temp file that is renamed into place only after its sha256 starts with
    the hex digits of a ``-<hash>.pth`` file name (the original's publishing convention).
    """
    url = resolve_url(url)
    name = Path(unquote(urlparse(url).path)).name
    if not name:
        raise CheckpointError(f"download: {url!r} does not end in a file name")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    dest = cache / name
    if dest.is_file():
        return dest
    expected = sha256_prefix_in_name(name)

    def fetch_and_check(f: IO[bytes]) -> None:
        digest = _fetch(url, f, name, progress)
        if expected is not None and not digest.startswith(expected):
            raise CheckpointError(
                f"download: {url}: sha256 {digest[:len(expected)]}... does not match {expected} from "
                "the file name; the corrupt download was removed"
            )

    return atomic_write(dest, fetch_and_check, suffix=".part")


def _fetch(url: str, f: IO[bytes], name: str, progress: bool) -> str:
    """Stream ``url`` into ``f`` with a progress bar; return the sha256 hex digest."""
    from tqdm import tqdm

    sha = hashlib.sha256()
    request = urllib.request.Request(url, headers={"User-Agent": "gcnet"})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except (urllib.error.URLError, OSError) as err:
        raise CheckpointError(f"download: could not fetch {url}: {err}") from None
    with response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        done = 0
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name,
                  disable=not progress) as bar:
            while chunk := response.read(1 << 20):
                f.write(chunk)
                sha.update(chunk)
                done += len(chunk)
                bar.update(len(chunk))
    if total is not None and done != total:
        raise CheckpointError(f"download: {url}: got {done} of {total} bytes")
    return sha.hexdigest()
