"""Read, check, load, save and download checkpoints (the original's published files and our own).

Files are unpickled with ``torch.load(weights_only=True)`` only: tensors and plain data, plus an
explicit short allow-list (numpy arrays/scalars/dtypes) that old training metadata may carry.
A published mmdetection file is ``{"state_dict": OrderedDict, "meta": {...}}``; mmcv's loader takes
``state_dict``, strips ``module.`` and upgrades DCN's legacy ``conv2_offset`` keys; so do we.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import re
import tempfile
import urllib.error
import urllib.request
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union
from urllib.parse import unquote, urlparse

import torch
from torch import Tensor, nn

__all__ = ["CheckpointError", "read_checkpoint", "load_checkpoint", "save_checkpoint", "download",
           "resolve_url", "default_cache_dir", "BackboneStructure", "backbone_structure"]

PathLike = Union[str, os.PathLike]

# ImageNet initialisations named the way the original's configs name them (mmcv/mmengine hub).
PRETRAINED_URLS: dict[str, str] = {
    "torchvision://resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    "torchvision://resnet101": "https://download.pytorch.org/models/resnet101-63fe2227.pth",
    "open-mmlab://resnext101_32x4d":
        "https://download.openmmlab.com/pretrain/third_party/resnext101_32x4d-a5af3160.pth",
}
_SHA_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.pth?$")
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)|unrecognized function ([^\s]+)")
_LEGACY_OFFSET = re.compile(r"^(.*\bconv\d*)_offset\.(weight|bias)$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read, fetched, or does not fit the model; says which and why."""


# ----------------------------------------------------------------------------- reading


def _numpy_safe_globals() -> list[Any]:
    """Numpy types old metadata may hold (scalars, arrays, dtypes), under old and new module names."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency
        return []
    core = getattr(np, "_core", None) or np.core
    out: list[Any] = [np.ndarray, np.dtype]
    for fn_name in ("_reconstruct", "scalar"):
        fn = getattr(core.multiarray, fn_name)
        out += [(fn, f"numpy.core.multiarray.{fn_name}"), (fn, f"numpy._core.multiarray.{fn_name}")]
    # unpickling a dtype rebuilds an instance of its concrete class (numpy.dtypes.Float64DType...)
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        out += [t for t in vars(dtypes).values() if isinstance(t, type) and issubclass(t, np.dtype)]
    return out


def _refused_global(message: str) -> Optional[str]:
    match = _REFUSED_GLOBAL.search(message)
    return None if match is None else (match.group(1) or match.group(2))


def _allow(extra: list[Any]) -> contextlib.AbstractContextManager:
    """Allow ``extra`` for one load only (torch < 2.5 has no allow-list: plain data only)."""
    if not hasattr(torch.serialization, "safe_globals"):
        return contextlib.nullcontext()
    already = torch.serialization.get_safe_globals()
    return torch.serialization.safe_globals([g for g in extra if g not in already])


def _torch_load(path: Path, map_location: Any, trusted: Sequence[Any]) -> Any:
    try:
        with _allow(_numpy_safe_globals() + list(trusted)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        name = _refused_global(str(err))
        if name is None:
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({err})") from None
        raise CheckpointError(
            f"{path}: refused to unpickle the Python global {name!r}: gcnet loads checkpoints with "
            "torch.load(weights_only=True) and allows only tensors, plain Python data and numpy "
            "arrays/scalars. If you trust this file, pass trusted_globals=[<that class>] to "
            "read_checkpoint, or re-save its state_dict with plain types."
        ) from None
    except Exception as err:  # truncated or foreign files fail in many ways inside torch.load
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({err})") from None


def _clean_key(key: str) -> str:
    """Strip DataParallel's ``module.`` and upgrade DCN v1 keys (mmcv DeformConv2dPack version < 2)."""
    if key.startswith("module."):
        key = key[len("module."):]
    return _LEGACY_OFFSET.sub(r"\1.conv_offset.\2", key)


def _split(obj: Any, path: Path) -> tuple[Mapping[str, Any], dict]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict in the checkpoint, found {type(obj).__name__}")
    for key in ("state_dict", "model"):
        if isinstance(obj.get(key), Mapping):
            meta = obj.get("meta")
            return obj[key], dict(meta) if isinstance(meta, Mapping) else {}
    if obj and all(isinstance(v, Tensor) for v in obj.values()):
        return obj, {}
    raise CheckpointError(
        f"{path}: found no weights: neither a 'state_dict' entry nor a bare state dict "
        f"(top-level keys: {sorted(map(str, obj))[:20]})"
    )


def read_checkpoint(
    path: PathLike, *, map_location: Any = "cpu", trusted_globals: Sequence[Any] = ()
) -> tuple[dict[str, Tensor], dict]:
    """``(state_dict, meta)`` of a published mmdetection file, a bare state dict, or our own file.

    Keys come back cleaned (no ``module.``, DCN ``convN_offset`` -> ``convN.conv_offset``).
    ``trusted_globals`` lets a caller allow extra classes explicitly; nothing else is unpickled.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    raw_sd, meta = _split(_torch_load(path, map_location, trusted_globals), path)
    state_dict: dict[str, Tensor] = OrderedDict()
    for key, value in raw_sd.items():
        if not isinstance(value, Tensor):
            raise CheckpointError(f"{path}: state_dict entry {key!r} is a {type(value).__name__}, not a tensor")
        new_key = _clean_key(str(key))
        if new_key in state_dict:
            raise CheckpointError(f"{path}: two state_dict entries map to the key {new_key!r}")
        state_dict[new_key] = value
    return state_dict, meta


# ----------------------------------------------------------------------------- structure check

_DEPTHS = {
    (True, (3, 4, 6, 3)): 50, (True, (3, 4, 23, 3)): 101, (True, (3, 8, 36, 3)): 152,
    (False, (2, 2, 2, 2)): 18, (False, (3, 4, 6, 3)): 34,
}


@dataclass(frozen=True)
class BackboneStructure:
    """What a state dict says about its ResNet/ResNeXt: blocks, widths, groups, DCN and GC stages."""

    blocks: tuple[int, ...]
    bottleneck: bool
    widths: tuple[int, ...]  # conv2 channels of each stage
    groups: int
    dcn: tuple[bool, ...]
    gc: tuple[Optional[tuple[int, int]], ...]  # (planes, channels) of each stage's GC block

    def describe(self) -> str:
        depth = _DEPTHS.get((self.bottleneck, self.blocks))
        depth_text = str(depth) if depth is not None else "?"
        if self.groups > 1:
            text = f"ResNeXt-{depth_text} {self.groups}x{self.widths[0] // self.groups}d"
        else:
            text = f"ResNet-{depth_text}"
        dcn = [f"c{i + 2}" for i, on in enumerate(self.dcn) if on]
        if dcn:
            text += f" with DCN in {','.join(dcn)}"
        gc = [(f"c{i + 2}", g) for i, g in enumerate(self.gc) if g is not None]
        if gc:
            ratios = sorted({round(c / max(p, 1)) for _, (p, c) in gc})
            text += f" with GC {'/'.join(f'r{r}' for r in ratios)} in {','.join(s for s, _ in gc)}"
        return text

    def blocks_text(self) -> str:
        return "(" + ",".join(map(str, self.blocks)) + " blocks)"


def backbone_structure(state_dict: Mapping[str, Tensor]) -> Optional[BackboneStructure]:
    """Read the backbone's structure from key names and shapes (None if there is no ResNet)."""
    anchor = next((k for k in state_dict if k.endswith("layer1.0.conv1.weight")
                   and k[: -len("layer1.0.conv1.weight")] in ("", "backbone.")), None)
    if anchor is None:
        return None
    pre = anchor[: -len("layer1.0.conv1.weight")]
    blocks, widths, dcn, gc = [], [], [], []
    groups = 1
    bottleneck = f"{pre}layer1.0.conv3.weight" in state_dict
    for stage in range(1, 5):
        n = 0
        while f"{pre}layer{stage}.{n}.conv1.weight" in state_dict:
            n += 1
        if n == 0:
            break
        blocks.append(n)
        conv2 = state_dict.get(f"{pre}layer{stage}.0.conv2.weight")
        if conv2 is not None and conv2.dim() == 4:
            widths.append(int(conv2.shape[0]))
            groups = max(groups, int(conv2.shape[0]) // max(int(conv2.shape[1]), 1))
        stage_pre = f"{pre}layer{stage}."
        dcn.append(any(k.startswith(stage_pre) and ".conv2.conv_offset." in k for k in state_dict))
        gc_w = state_dict.get(f"{pre}layer{stage}.0.context_block.channel_add_conv.0.weight")
        gc.append(None if gc_w is None else (int(gc_w.shape[0]), int(gc_w.shape[1])))
    return BackboneStructure(tuple(blocks), bottleneck, tuple(widths), groups, tuple(dcn), tuple(gc))


def _check_backbone(own: Mapping[str, Tensor], ckpt: Mapping[str, Tensor], source: str) -> None:
    """The original once built the X-101 DCN cascades on R-50 by mistake: say so plainly."""
    mine, theirs = backbone_structure(own), backbone_structure(ckpt)
    if mine is None or theirs is None or mine == theirs:
        return
    raise CheckpointError(
        f"{source}: checkpoint has a {theirs.describe()} backbone {theirs.blocks_text()} but the "
        f"config builds a {mine.describe()} backbone {mine.blocks_text()}; pick the config that "
        "matches this checkpoint (gcnet.zoo lists each published file with its config)"
    )


# ----------------------------------------------------------------------------- loading


def _unwrap(model: nn.Module) -> nn.Module:
    """The module whose keys match the original's: no DDP ``module.``, no compile ``_orig_mod.``."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def _listing(title: str, items: list[str], limit: int = 40) -> str:
    if not items:
        return ""
    more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"\n  {title} ({len(items)}):\n    " + "\n    ".join(items[:limit]) + more


def _locate(path_or_url: PathLike) -> Path:
    text = os.fspath(path_or_url)
    if isinstance(text, str) and (re.match(r"^[a-z][a-z0-9+.-]*://", text) or _is_zoo_name(text)):
        return download(resolve_url(text))
    return Path(text)


def _is_zoo_name(text: str) -> bool:
    from gcnet.zoo import ZOO  # local import: the zoo is optional for plain file loads

    return text in ZOO


def load_checkpoint(
    model: nn.Module, path_or_url: PathLike, strict: bool = True, map_location: Any = "cpu"
) -> dict:
    """Load weights into ``model`` from a path, an http(s) URL, a ``torchvision://``-style name or
    a zoo config name; returns the checkpoint's ``meta``.

    Strict by default: any missing or unexpected key raises :class:`CheckpointError` listing them
    (missing ``num_batches_tracked`` counters are tolerated). Shape mismatches always raise.
    """
    path = _locate(path_or_url)
    state_dict, meta = read_checkpoint(path, map_location=map_location)
    target = _unwrap(model)
    own = target.state_dict()
    _check_backbone(own, state_dict, str(path))
    missing = [k for k in own if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
              for k, v in state_dict.items() if k in own and v.shape != own[k].shape]
    if shapes or (strict and (missing or unexpected)):
        raise CheckpointError(
            f"{path}: checkpoint does not match the model"
            + _listing("missing keys (in the model, not in the file)", missing)
            + _listing("unexpected keys (in the file, not in the model)", unexpected)
            + _listing("shape mismatches", shapes)
        )
    target.load_state_dict({k: v for k, v in state_dict.items() if k in own}, strict=False)
    if missing or unexpected:
        warnings.warn(
            f"{path}: loaded non-strictly; {len(missing)} missing and {len(unexpected)} unexpected keys"
            + _listing("missing", missing, 10) + _listing("unexpected", unexpected, 10),
            stacklevel=2,
        )
    return meta


# ----------------------------------------------------------------------------- saving

_PLAIN = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.Size, torch.device)


def _check_plain(obj: Any, where: str) -> None:
    """Refuse anything ``weights_only`` loading would refuse later, naming where it sits."""
    if type(obj) in _PLAIN or isinstance(obj, Tensor):  # exact types: np.float64 subclasses float
        return
    if type(obj) in (dict, OrderedDict):
        for k, v in obj.items():
            _check_plain(k, f"{where} key")
            _check_plain(v, f"{where}[{k!r}]")
        return
    if type(obj) in (list, tuple, set):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
        return
    raise TypeError(
        f"save_checkpoint: {where} is a {type(obj).__module__}.{type(obj).__qualname__}; only tensors "
        "and plain Python data (dict, list, tuple, str, numbers, None) can be saved, so that the file "
        "loads with torch.load(weights_only=True)"
    )


def save_checkpoint(
    path: PathLike,
    model_or_state_dict: Union[nn.Module, Mapping[str, Tensor]],
    meta: Optional[Mapping[str, Any]] = None,
    **extra: Any,
) -> Path:
    """Write ``{"state_dict", "meta", **extra}`` atomically: temp file, fsync, ``os.replace``.

    A crash midway leaves any previous file at ``path`` untouched.
    """
    path = Path(path)
    if isinstance(model_or_state_dict, nn.Module):
        source: Mapping[str, Tensor] = _unwrap(model_or_state_dict).state_dict()
    elif isinstance(model_or_state_dict, Mapping):
        source = model_or_state_dict
    else:
        raise TypeError(f"save_checkpoint: expected an nn.Module or a state dict, "
                        f"got {type(model_or_state_dict).__name__}")
    state_dict: dict[str, Tensor] = OrderedDict()
    for key, value in source.items():
        if not isinstance(value, Tensor):
            raise TypeError(f"save_checkpoint: state_dict[{key!r}] is a {type(value).__name__}, not a tensor")
        state_dict[str(key)] = value.detach().cpu()
    meta_dict = dict(meta or {})
    _check_plain(meta_dict, "meta")
    for key in ("state_dict", "meta"):
        if key in extra:
            raise TypeError(f"save_checkpoint: extra entry {key!r} would overwrite the {key}")
    _check_plain(extra, "extra")
    payload = {"state_dict": state_dict, "meta": meta_dict, **extra}

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable where the OS allows it (not on Windows)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ----------------------------------------------------------------------------- downloading


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
    from gcnet.zoo import get_entry

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
    cache.mkdir(parents=True, exist_ok=True)
    match = _SHA_IN_NAME.search(name)
    expected = match.group(1) if match else None
    fd, tmp = tempfile.mkstemp(dir=cache, prefix=f".{name}.", suffix=".part")
    try:
        digest = _fetch(url, fd, name, progress)
        if expected is not None and not digest.startswith(expected):
            raise CheckpointError(
                f"download: {url}: sha256 {digest[:len(expected)]}... does not match {expected} from "
                "the file name; the corrupt download was removed"
            )
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def _fetch(url: str, fd: int, name: str, progress: bool) -> str:
    """Stream ``url`` into the open file ``fd`` with a progress bar; return the sha256 hex digest."""
    from tqdm import tqdm

    sha = hashlib.sha256()
    request = urllib.request.Request(url, headers={"User-Agent": "gcnet"})
    with os.fdopen(fd, "wb") as f:
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
        f.flush()
        os.fsync(f.fileno())
    return sha.hexdigest()
