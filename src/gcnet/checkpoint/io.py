"""Safe reading and atomic writing of checkpoint files (the original's layout and our own).

Files are unpickled with ``torch.load(weights_only=True)`` only: tensors and plain data, plus an
explicit short allow-list (numpy arrays/scalars/dtypes) that old training metadata may carry.
A published mmdetection file is ``{"state_dict": OrderedDict, "meta": {...}}``; mmcv's loader takes
``state_dict`` and strips ``module.``; so do we. DCN's legacy ``conv2_offset`` keys depend on the model
and are upgraded where it is known (:func:`upgrade_legacy_dcn_keys`).
Every write goes through :func:`atomic_write`, so a crash midway never leaves half a file.
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import os
import pickle
import re
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor, nn
from torch.torch_version import TorchVersion

PathLike = str | os.PathLike

_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)|unrecognized function ([^\s]+)")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read, fetched, or does not fit the model; says which and why."""


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module whose keys match the original's: no DDP/DataParallel ``module.``, no compile
    ``_orig_mod.`` (wrappers nest, e.g. a compiled DDP model)."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(inner := getattr(model, "_orig_mod", None), nn.Module):
            model = inner
        else:
            return model


# ----------------------------------------------------------------------------- reading


_TORCH_TAKES_NAMED_GLOBALS = TorchVersion(torch.__version__) >= "2.6"  # (obj, "module.name") pairs


def _named(obj: Callable[..., Any], full_name: str) -> Any:
    """``obj`` as the safe global ``full_name`` (``module.name``), on every torch we support.

    torch >= 2.6 takes ``(obj, full_name)`` pairs; older ones key the allow-list by the object's
    own ``__module__``/``__name__``, so a function that a file names differently (numpy 1 wrote
    ``numpy.core.multiarray``, numpy 2 has ``numpy._core.multiarray``) gets a forwarding alias that
    carries that name. Classes cannot be aliased (instances are checked by type): pairs only.
    """
    module, _, name = full_name.rpartition(".")
    if (getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)) == (module, name):
        return obj
    if isinstance(obj, type):
        if _TORCH_TAKES_NAMED_GLOBALS:
            return (obj, full_name)
        raise TypeError(
            f"trusted global {full_name!r}: a class under another name needs torch >= 2.6 (this is {torch.__version__})"
        )

    def alias(*args: Any, **kwargs: Any) -> Any:
        return obj(*args, **kwargs)

    alias.__module__, alias.__name__, alias.__qualname__ = module, name, name
    return alias


@functools.lru_cache(maxsize=1)
def _numpy_safe_globals() -> tuple[Any, ...]:
    """Numpy types old metadata may hold (scalars, arrays, dtypes), under old and new module names,
    plus ``codecs.encode``: protocol-2 pickles write bytes through it (torch >= 2.5 allows it by
    default). Built once, so that the same alias objects are added and removed on every load."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency
        return ()
    core = getattr(np, "_core", None) or np.core
    out: list[Any] = [np.ndarray, np.dtype, codecs.encode]
    for fn_name in ("_reconstruct", "scalar"):
        fn = getattr(core.multiarray, fn_name)
        out += [_named(fn, f"numpy.core.multiarray.{fn_name}"), _named(fn, f"numpy._core.multiarray.{fn_name}")]
    # unpickling a dtype rebuilds an instance of its concrete class (numpy.dtypes.Float64DType...)
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        out += [t for t in vars(dtypes).values() if isinstance(t, type) and issubclass(t, np.dtype)]
    return tuple(out)


def _refused_global(message: str) -> str | None:
    match = _REFUSED_GLOBAL.search(message)
    return None if match is None else (match.group(1) or match.group(2))


# torch's allow-list is process-wide (torch.serialization.safe_globals too): one lock serialises
# our loads, so that one load's clean-up never removes an entry that another of ours still needs.
_ALLOW_LOCK = threading.Lock()


@contextlib.contextmanager
def _allow(extra: Sequence[Any]) -> Iterator[None]:
    """Allow ``extra`` for one load only: what was not allowed before is added, and removed again
    afterwards (also on error), so a load accepts the same globals on every torch we support and
    nothing stays allowed for later ``torch.load`` calls. Other threads' ``torch.load`` may see the
    extras while a load of ours runs; entries others add meanwhile are kept."""
    serialization = torch.serialization
    with _ALLOW_LOCK:
        before = list(serialization.get_safe_globals())  # torch 2.4 hands out its live list
        added = [g for g in extra if g not in before]
        serialization.add_safe_globals(added)
        try:
            yield
        finally:
            keep = [g for g in serialization.get_safe_globals() if not any(g is a for a in added)]
            serialization.clear_safe_globals()
            serialization.add_safe_globals(keep)


def safe_torch_load(path: PathLike, map_location: Any = "cpu", trusted: Sequence[Any] = (), mmap: bool = False) -> Any:
    """``torch.load(weights_only=True)`` with numpy metadata allowed; any failure becomes a
    :class:`CheckpointError` naming the file (and the refused class, for hostile pickles).

    ``mmap`` maps a zip checkpoint's tensors from the file instead of reading them (a reader of its
    config pays for the pickle alone); a legacy pickle is read whole either way."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    with path.open("rb") as f:
        head = f.read(4)
    if not (head.startswith(b"PK") or head[:1] == b"\x80"):  # torch's zip archive / legacy pickle
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (neither a zip nor a pickle; starts with {head!r})")
    trusted_named = [_named(*g) if isinstance(g, tuple) else g for g in trusted]
    try:
        with _allow([*_numpy_safe_globals(), *trusted_named]):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap and head.startswith(b"PK"))
    except pickle.UnpicklingError as err:
        name = _refused_global(str(err))
        if name is None:
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({_first_line(err)})") from None
        raise CheckpointError(
            f"{path}: refused to unpickle the Python global {name!r}: gcnet loads checkpoints with "
            "torch.load(weights_only=True) and allows only tensors, plain Python data and numpy "
            "arrays/scalars. If you trust this file, pass trusted_globals=[<that class>] to "
            "read_checkpoint, or re-save its state_dict with plain types."
        ) from None
    except Exception as err:  # truncated or foreign files fail in many ways inside torch.load
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({_first_line(err)})") from None


def _first_line(err: BaseException) -> str:
    """The gist of a torch.load error: its last non-empty line that is not torch's generic advice
    (which suggests ``weights_only=False``, the opposite of what a safe loader should do)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    advice = ("Check the documentation", "Please file")
    useful = [ln for ln in lines if "weights_only" not in ln and not ln.startswith(advice)]
    return (useful or lines or [type(err).__name__])[-1]


def _clean_key(key: str) -> str:
    """Strip DataParallel's ``module.`` (mmcv's loader does the same)."""
    return key[len("module.") :] if key.startswith("module.") else key


_OFFSET_SUFFIX = "conv_offset."


def upgrade_legacy_dcn_keys(state_dict: Mapping[str, Tensor], model_keys: Iterable[str]) -> dict[str, Tensor]:
    """``state_dict`` with DCN v1 offsets of the old layout renamed to the current one.

    As mmcv's ``DeformConv2dPack`` (state version < 2): for each deformable conv of the model at
    ``P`` (it owns ``P.conv_offset.weight``), a file key ``P_offset.weight|bias`` becomes
    ``P.conv_offset.weight|bias``, only where the file lacks the current key. Every other key,
    current offset keys included, is left as it is; order is kept.
    """
    renames: dict[str, str] = {}
    for key in model_keys:
        head, sep, param = key.rpartition("." + _OFFSET_SUFFIX)
        if not sep or param not in ("weight", "bias") or key in state_dict:
            continue
        old = f"{head}_offset.{param}"
        if old in state_dict:
            renames[old] = key
    return OrderedDict((renames.get(k, k), v) for k, v in state_dict.items())


def _split(obj: Any, path: Path) -> tuple[Mapping[str, Any], dict]:
    """(weights, meta) of a loaded file: its ``state_dict``/``model`` entry, or a bare state dict."""
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
    path: PathLike, *, map_location: Any = "cpu", trusted_globals: Sequence[Any] = (), mmap: bool = False
) -> tuple[dict[str, Tensor], dict]:
    """``(state_dict, meta)`` of a published mmdetection file, a bare state dict, or our own file.

    Keys come back without DataParallel's ``module.``; legacy DCN keys are upgraded on load into a
    model (:func:`upgrade_legacy_dcn_keys`), where it is known which modules are deformable.
    ``trusted_globals`` lets a caller allow extra classes explicitly; nothing else is unpickled.
    ``mmap``: see :func:`safe_torch_load`.
    """
    path = Path(path)
    raw_sd, meta = _split(safe_torch_load(path, map_location, trusted_globals, mmap), path)
    state_dict: dict[str, Tensor] = OrderedDict()
    for key, value in raw_sd.items():
        if not isinstance(value, Tensor):
            raise CheckpointError(f"{path}: state_dict entry {key!r} is a {type(value).__name__}, not a tensor")
        new_key = _clean_key(str(key))
        if new_key in state_dict:
            raise CheckpointError(f"{path}: two state_dict entries map to the key {new_key!r}")
        state_dict[new_key] = value
    return state_dict, meta


# ----------------------------------------------------------------------------- writing


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable where the OS allows it (not on Windows)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: PathLike, write: Callable[[IO[bytes]], None], suffix: str = ".tmp") -> Path:
    """Call ``write(file)`` on a temp file beside ``path``, fsync it, then rename it over ``path``.

    If ``write`` raises (disk full, a failed download check, Ctrl-C), the temp file is removed and
    any previous file at ``path`` stays untouched. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_copy(src: PathLike, dst: PathLike) -> Path:
    """Copy ``src`` to ``dst`` so that ``dst`` is either the old file or the complete copy."""
    with open(src, "rb") as source:
        return atomic_write(dst, lambda f: shutil.copyfileobj(source, f))


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
    model_or_state_dict: nn.Module | Mapping[str, Tensor],
    meta: Mapping[str, Any] | None = None,
    **extra: Any,
) -> Path:
    """Write ``{"state_dict", "meta", **extra}`` atomically (see :func:`atomic_write`).

    Weights are detached CPU copies under the unwrapped model's keys; ``meta`` and ``extra`` must
    be plain data, checked before anything is written, so the file reads back with
    ``weights_only=True``; tensors inside them are saved as CPU copies too.
    """
    if isinstance(model_or_state_dict, nn.Module):
        source: Mapping[str, Tensor] = unwrap_model(model_or_state_dict).state_dict()
    elif isinstance(model_or_state_dict, Mapping):
        source = model_or_state_dict
    else:
        raise TypeError(
            f"save_checkpoint: expected an nn.Module or a state dict, got {type(model_or_state_dict).__name__}"
        )
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
    payload = {"state_dict": state_dict, "meta": _on_cpu(meta_dict), **_on_cpu(extra)}
    return atomic_write(path, lambda f: torch.save(payload, f))


def _on_cpu(obj: Any) -> Any:
    """``obj`` with every tensor inside (optimizer state: momentum buffers) as a detached CPU copy,
    so that a checkpoint written on GPUs opens with a plain ``torch.load`` on any machine."""
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if type(obj) in (dict, OrderedDict):
        return type(obj)((k, _on_cpu(v)) for k, v in obj.items())
    if type(obj) in (list, tuple):
        return type(obj)(_on_cpu(v) for v in obj)
    return obj
