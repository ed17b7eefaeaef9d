"""The one fetch-and-verify path for every remote file: detector checkpoints and ImageNet backbones.

Named weights (``torchvision://<model>``, ``open-mmlab://<name>``) become URLs here; the file is
fetched once by ``torch.hub.download_url_to_file`` (a temp file beside the destination, moved into
place only when complete and, for ``<stem>-<sha256 prefix>.pth`` names, only when the hash matches)
and reused from the cache, offline, afterwards. Zoo config names are not known here (checkpoint
I/O is core): the application layer's builder turns them into their URL first.
"""

from __future__ import annotations

import os
import re
from http.client import HTTPException
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.parse import unquote, urlparse

import torch
import torchvision

from gcnet.checkpoint.io import CheckpointError, PathLike

# ImageNet initialisations named the way the original's configs name them (mmcv/mmengine hub);
# other torchvision://<model> names come from torchvision's own weights tables.
PRETRAINED_URLS: dict[str, str] = {
    "torchvision://resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    "torchvision://resnet101": "https://download.pytorch.org/models/resnet101-63fe2227.pth",
    "open-mmlab://resnext101_32x4d": "https://download.openmmlab.com/pretrain/third_party/resnext101_32x4d-a5af3160.pth",
}
_SHA_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.pth?$")
_GOT_DIGEST = re.compile(r'got "([0-9a-f]+)"')
_URL_SCHEMES = ("http", "https", "file")


def sha256_prefix_in_name(file_name: str) -> str | None:
    """The hex digits closing ``<stem>-<hash>.pth``: the start of the file's sha256, as the
    original's publishing script names files (None when the name carries no hash)."""
    match = _SHA_IN_NAME.search(file_name)
    return None if match is None else match.group(1)


def default_cache_dir() -> Path:
    """``$GCNET_HOME`` if set, else ``~/.cache/gcnet/checkpoints``."""
    home = os.environ.get("GCNET_HOME")
    return Path(home).expanduser() if home else Path.home() / ".cache" / "gcnet" / "checkpoints"


def _torchvision_url(model: str, name: str) -> str:
    """torchvision's IMAGENET1K_V1 file for ``model`` (what ``torchvision://`` means in mmcv)."""
    try:
        return torchvision.models.get_model_weights(model)["IMAGENET1K_V1"].url
    except (ValueError, KeyError):
        raise CheckpointError(
            f"unknown checkpoint name {name!r}: torchvision has no IMAGENET1K_V1 weights for {model!r}"
        ) from None


def resolve_url(name: str) -> str:
    """The URL behind ``name``: http(s) and file URLs pass through, ``torchvision://<model>`` and
    ``open-mmlab://<name>`` become their published file; anything else is a :class:`CheckpointError`."""
    if name in PRETRAINED_URLS:
        return PRETRAINED_URLS[name]
    scheme, sep, rest = name.partition("://")
    if sep and scheme in _URL_SCHEMES:
        return name
    if sep and scheme == "torchvision":
        return _torchvision_url(rest, name)
    raise CheckpointError(
        f"unknown checkpoint name {name!r}: expected an http(s)/file URL, torchvision://<model> or "
        f"one of {sorted(PRETRAINED_URLS)}"
    )


def _hub_copy(name: str) -> Path:
    """Where torch hub (and so torchvision) keeps a downloaded checkpoint of this file name."""
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def _download_error(url: str, err: BaseException, expected: str | None) -> CheckpointError:
    """One line naming the URL and what went wrong, for each way ``download_url_to_file`` fails."""
    if isinstance(err, HTTPError):
        return CheckpointError(f"download {url}: HTTP error {err.code} {err.reason}")
    if isinstance(err, URLError):
        where = urlparse(url).netloc or "the local file"
        return CheckpointError(f"download {url}: could not reach {where} ({err.reason})")
    got = _GOT_DIGEST.search(str(err))
    if isinstance(err, RuntimeError) and expected is not None and got is not None:
        return CheckpointError(
            f"download {url}: sha256 mismatch: expected prefix {expected} (from the file name), got "
            f"{got.group(1)[: len(expected)]}; the corrupt download was removed"
        )
    return CheckpointError(f"download {url}: {type(err).__name__}: {err}")


def download(url: str, cache_dir: PathLike | None = None, progress: bool = True) -> Path:
    """The local copy of ``url`` (or of a ``torchvision://``-style name), fetched once and verified.

    Looks in ``cache_dir`` (default :func:`default_cache_dir`), then, for hash-named files, in
    torch hub's checkpoint cache (a torchvision file already there is not fetched twice); else
    downloads into ``cache_dir``. A failed or corrupt download leaves nothing at the destination.
    """
    url = resolve_url(url)
    name = Path(unquote(urlparse(url).path)).name
    if not name:
        raise CheckpointError(f"download {url}: the URL does not end in a file name")
    expected = sha256_prefix_in_name(name)
    dest = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / name
    if dest.is_file():
        return dest
    if expected is not None and _hub_copy(name).is_file():
        return _hub_copy(name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(dest), hash_prefix=expected, progress=progress)
    except (OSError, HTTPException, RuntimeError) as err:
        raise _download_error(url, err, expected) from None
    return dest
