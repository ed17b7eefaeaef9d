"""Inference speed: speed-ups of a detector that keep its detections, and the clocks to measure them.

``prepare_for_inference(model)`` returns a tuned copy: eval-mode norms folded into the convs before
them (the original's ``--fuse-conv-bn``); on GPU channels-last (NHWC) conv weights so cuDNN runs
without layout reorders; on CPU the 1x1 convs on oneDNN and the 3x3 ones on NNPACK's Winograd kernel
(see :class:`FastConv2d`), all kernels that PyTorch itself ships.
``compile_detector`` adds ``torch.compile`` (inductor) of the whole model or of its static parts.
All of it is generic: it applies to torchvision's detectors too, which the benchmark uses for a fair
"same tricks" comparison. Training must use the unmodified model.

Measurement primitives (device sync, autocast, memory meter, timed loop, CPU-time clock) live here
too; ``gcnet.bench`` builds the original's benchmark protocol on them.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d as TorchvisionFrozenBatchNorm2d

from gcnet.layers import FrozenBatchNorm2d
from gcnet.layers.layout import to_nchw

__all__ = [
    "CompileScope",
    "ConvKernel",
    "FastConv2d",
    "autocast_context",
    "compile_detector",
    "cpu_conv_kernel",
    "cpu_time_s",
    "fuse_conv_bn",
    "nnpack_ready",
    "prepare_for_inference",
    "sync",
    "use_fast_convs",
]

CompileScope = Literal["full", "static"]
_AMP_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

# PyTorch sends small inputs to its native kernel on purpose (faster there); so do we.
_ONEDNN_MIN_NUMEL = 20480
# Where NNPACK's Winograd beats oneDNN's direct 3x3 conv (measured, 1 thread, AVX2 AMD EPYC, fp32):
# one image at a time from ~600 output pixels per map (2.9x on 200x304, 1.7x on 25x38 FPN maps, 1.0x
# at 13x19), or many small maps at once (100 mask-head RoIs of 14x14: 1.9x); not for a few small maps.
_NNPACK_MIN_PIXELS = 600
_NNPACK_MIN_BATCH = 16
_NNPACK_MIN_CHANNELS = 32

ConvKernel = Literal["onednn", "nnpack", "nnpack_per_image", "default"]


@functools.lru_cache(maxsize=1)
def nnpack_ready() -> bool:
    """Whether this PyTorch has NNPACK and it initialised (``is_available`` initialises it; a conv
    called before that fails)."""
    return hasattr(torch, "_nnpack_spatial_convolution") and bool(torch.backends.nnpack.is_available())


def cpu_conv_kernel(conv: nn.Conv2d, x: Tensor) -> ConvKernel:
    """Which of PyTorch's CPU conv kernels runs ``conv(x)`` fastest in fp32 inference.

    - 1x1 stride 1: oneDNN. PyTorch's dispatch sends these to its im2col + GEMM kernel when one
      thread runs a batch < 16, and oneDNN is 15-40% faster on them (54-67 vs 65-85 GFLOP/s).
    - 3x3 stride 1, dense, "same" padding, >= 32 channels: NNPACK's Winograd F(6x6, 3x3), about 4x
      fewer multiplications than a direct conv (relative error ~1e-5 of the output's scale):
      per image on large maps (its single-image algorithm), as one batch on many small ones.
    - anything else, autograd, autocast, other dtypes and devices, ``torch.compile``: ``"default"``
      (``nn.Conv2d``'s own dispatch).
    """
    if not (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and conv.weight.dtype == torch.float32
        and x.dim() == 4
        and x.numel() > 0
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and not torch.is_autocast_enabled("cpu")
        and not (torch.is_grad_enabled() and (x.requires_grad or conv.weight.requires_grad))
        and not torch.compiler.is_compiling()
    ):
        return "default"
    if conv.kernel_size == (1, 1):
        return "onednn" if x.numel() > _ONEDNN_MIN_NUMEL and torch.backends.mkldnn.is_available() else "default"
    if (
        conv.kernel_size == (3, 3)
        and conv.padding == (1, 1)
        and conv.groups == 1
        and min(conv.in_channels, conv.out_channels) >= _NNPACK_MIN_CHANNELS
        and nnpack_ready()
    ):
        if x.shape[-2] * x.shape[-1] >= _NNPACK_MIN_PIXELS:
            return "nnpack" if x.shape[0] == 1 else "nnpack_per_image"
        if x.shape[0] >= _NNPACK_MIN_BATCH:
            return "nnpack"
    return "default"


class FastConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose fp32 CPU inference runs on the fastest kernel PyTorch ships for its shape
    (see :func:`cpu_conv_kernel`); training, CUDA and everything else take ``nn.Conv2d.forward``.
    Parameters and state_dict keys are ``nn.Conv2d``'s, so checkpoints load unchanged."""

    _nnpack_failed = False  # set on this conv once NNPACK refused it; PyTorch's kernel from then on

    def forward(self, x: Tensor) -> Tensor:
        kernel = cpu_conv_kernel(self, x)
        if kernel == "onednn":
            return torch.ops.aten.mkldnn_convolution(
                x, self.weight, self.bias, list(self.padding), list(self.stride), list(self.dilation), self.groups
            )
        if kernel == "default":
            return super().forward(x)
        if not self._nnpack_failed:
            try:
                return self._nnpack(x, per_image=kernel == "nnpack_per_image")
            except RuntimeError as err:  # NNPACK refuses some CPUs / sizes with a generic status error
                self._nnpack_failed = True
                warnings.warn(
                    f"NNPACK failed on input {tuple(x.shape)} ({err}); this conv uses PyTorch's kernel from now on",
                    stacklevel=2,
                )
        return super().forward(x)

    def _nnpack(self, x: Tensor, per_image: bool) -> Tensor:
        # cpu_conv_kernel sends only (1, 1)-padded convs here, never a string padding
        weight, pad = self.weight.contiguous(), list(cast("tuple[int, ...]", self.padding))
        if not per_image:
            return torch._nnpack_spatial_convolution(to_nchw(x), weight, self.bias, pad)
        # NNPACK's batched algorithm is slower than its single-image one on large maps: loop the batch
        return torch.cat([torch._nnpack_spatial_convolution(to_nchw(xi[None]), weight, self.bias, pad) for xi in x])


def use_fast_convs(model: nn.Module) -> int:
    """Turn every plain 1x1 or 3x3 stride-1 ``nn.Conv2d`` of ``model`` into :class:`FastConv2d`, in
    place (the kernel is chosen per call, from the input's shape). Returns how many were changed."""
    changed = 0
    for m in model.modules():
        if type(m) is nn.Conv2d and m.kernel_size in ((1, 1), (3, 3)) and m.stride == (1, 1):
            m.__class__ = FastConv2d
            changed += 1
    return changed


def _frozen_bn_types() -> tuple[type[nn.Module], ...]:
    """Norm classes with fixed statistics that can be folded (ours and torchvision's)."""
    return (nn.BatchNorm2d, FrozenBatchNorm2d, TorchvisionFrozenBatchNorm2d)


def _fold(conv: nn.Conv2d, norm: nn.Module) -> nn.Conv2d:
    """``conv`` followed by ``norm`` as one conv: w * g / sqrt(v + eps), b = (b - mean) * g / sqrt(v + eps) + beta."""
    if isinstance(norm, nn.BatchNorm2d):
        from torch.nn.utils.fusion import fuse_conv_bn_eval

        return fuse_conv_bn_eval(conv, norm)
    # A frozen norm (ours or torchvision's): its statistics and affine parameters are tensor buffers.
    weight, beta, mean, var = (
        cast(Tensor, getattr(norm, k)) for k in ("weight", "bias", "running_mean", "running_var")
    )
    scale = weight * torch.rsqrt(var + float(getattr(norm, "eps", 1e-5)))
    fused = copy.deepcopy(conv)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(mean)
    with torch.no_grad():
        fused.weight = nn.Parameter(conv.weight * scale.view(-1, 1, 1, 1).to(conv.weight.dtype))
        fused.bias = nn.Parameter(((bias - mean) * scale + beta).to(conv.weight.dtype))
    return fused


def fuse_conv_bn(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (in eval mode) with every eval-mode norm folded into the conv before it.

    Pairs are ``convN``/``bnN`` siblings and ``Sequential(conv, norm)`` (the downsample branch);
    deformable convs are left alone. Inference only: the original's ``--fuse-conv-bn`` option.
    """
    fused = copy.deepcopy(model).eval()
    norms = _frozen_bn_types()
    for parent in fused.modules():
        children = parent._modules
        pairs = [(k, "bn" + k[4:]) for k in children if k.startswith("conv") and "bn" + k[4:] in children]
        if isinstance(parent, nn.Sequential):
            keys = list(children)
            pairs += list(zip(keys[:-1], keys[1:]))
        for conv_key, bn_key in pairs:
            conv, bn = children[conv_key], children[bn_key]
            if type(conv) is nn.Conv2d and isinstance(bn, norms):
                children[conv_key] = _fold(conv, bn)
                children[bn_key] = nn.Identity()
    return fused


def prepare_for_inference(
    model: nn.Module,
    fuse_bn: bool = True,
    channels_last: bool = True,
    fast_convs: bool = True,
) -> nn.Module:
    """A copy of ``model`` tuned for inference: norms folded, conv layout and kernels chosen for the device.

    ``channels_last``: NHWC conv weights, so the convs and the elementwise ops after them run NHWC
    (cuDNN's tensor-core layout; on CPU oneDNN's fastest); the RoI heads convert the FPN maps back to
    NCHW once for RoIAlign. ``fast_convs`` routes the 1x1 and 3x3 convs to the fastest CPU kernel
    (:class:`FastConv2d`; no effect on GPU). Detections equal the eager model's up to float
    rounding. The input model is not modified.
    """
    out = fuse_conv_bn(model) if fuse_bn else copy.deepcopy(model).eval()
    if channels_last:
        out = out.to(memory_format=torch.channels_last)
    if fast_convs:
        use_fast_convs(out)
    return out


def _with_children(module: nn.Module, children: dict[str, nn.Module]) -> nn.Module:
    """A shallow copy of ``module`` (parameters shared) with some children replaced."""
    clone = copy.copy(module)
    clone._modules = {**module._modules, **children}
    return clone


def compile_detector(
    model: nn.Module,
    scope: CompileScope = "full",
    backend: str = "inductor",
    freeze: bool = False,
) -> nn.Module:
    """``torch.compile`` a detector for inference.

    ``"full"`` compiles the whole forward (dynamo splits it at the data-dependent NMS / top-k / mask
    steps); ``"static"`` compiles only the static-shape parts (backbone, FPN, RPN convs, box and mask
    heads) and leaves the glue eager, which compiles several times faster and gives the same outputs.
    ``freeze`` (inductor only, inference only) treats the weights as constants, which on CPU lets
    inductor prepack them for oneDNN and fuse conv + bias + ReLU / add.
    The model itself is not modified (``"static"`` returns shallow copies sharing the parameters).
    """
    if scope not in ("full", "static"):
        raise ValueError(f"compile_detector: scope must be 'full' or 'static', got {scope!r}")
    if freeze and backend != "inductor":
        raise ValueError(f"compile_detector: freeze=True needs backend='inductor', got {backend!r}")
    options: dict[str, Any] | None = {"freezing": True} if freeze else None

    def comp(m: nn.Module) -> nn.Module:
        # compiling a module returns a module (OptimizedModule); the stub types only the callable case
        return cast(nn.Module, torch.compile(m, backend=backend, options=options))

    if scope == "full":
        return comp(model)
    for child in ("backbone", "neck", "rpn_head", "roi_head"):
        if not hasattr(model, child):
            raise TypeError(f"compile_detector: model has no {child!r}; expected a gcnet TwoStageDetector")
    rpn = cast(nn.Module, model.rpn_head)
    rpn = _with_children(rpn, {k: comp(getattr(rpn, k)) for k in ("rpn_conv", "rpn_cls", "rpn_reg")})
    roi_head = cast(nn.Module, model.roi_head)
    heads: dict[str, nn.Module] = {}
    for attr in ("bbox_head", "mask_head"):
        head = getattr(roi_head, attr, None)
        if isinstance(head, nn.ModuleList):
            heads[attr] = nn.ModuleList(comp(h) for h in head)
        elif head is not None:
            heads[attr] = comp(head)
    roi = _with_children(roi_head, heads)
    backbone, neck = cast(nn.Module, model.backbone), cast(nn.Module, model.neck)
    return _with_children(model, {"backbone": comp(backbone), "neck": comp(neck), "rpn_head": rpn, "roi_head": roi})


# ------------------------------------------------------------------------------------ measurement


def sync(device: torch.device) -> None:
    """Wait for queued kernels so a timer measures the work, not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type not in ("cpu", "meta") and hasattr(torch, "accelerator"):
        torch.accelerator.synchronize(device)


def autocast_context(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    """Autocast for "bf16" / "fp16", a no-op for "fp32"."""
    if dtype not in _AMP_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_AMP_DTYPES)}, got {dtype!r}")
    amp = _AMP_DTYPES[dtype]
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp)


try:
    _PAGE = os.sysconf("SC_PAGE_SIZE")
except (AttributeError, ValueError, OSError):  # not a POSIX system
    _PAGE = 4096


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return None


class _MemoryMeter:
    """Peak memory over a block: CUDA allocator peak, or sampled RSS growth on CPU."""

    def __init__(self, device: torch.device, interval_s: float = 0.005) -> None:
        self.device = device
        self.interval_s = interval_s
        self.peak_mb: float | None = None
        self.note = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._base = 0
        self._peak = 0

    def __enter__(self) -> _MemoryMeter:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.note = "torch.cuda.max_memory_allocated (allocated, not reserved)"
        else:
            base = _rss_bytes()
            if base is None:
                self.note = "no memory counter on this platform"
                return self
            self._base = self._peak = base
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
            self.note = "CPU: growth of the resident set size (RSS) over the run, sampled every 5 ms (approximate)"
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            rss = _rss_bytes() or 0
            self._peak = max(self._peak, rss)

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, _rss_bytes() or 0)
            self.peak_mb = (self._peak - self._base) / 2**20


def _timed_loop(
    step: Callable[[int], Any],
    device: torch.device,
    warmup: int,
    iters: int,
    keep: Callable[[Any], Any] = lambda out: out,
) -> tuple[list[float], list[Any], _MemoryMeter]:
    """Run ``step(i)`` warmup + iters times; time only the last ``iters``, synchronised around each.

    Only ``keep(output)`` of each timed step is kept (after its timer stopped): keeping whole
    outputs (full-image masks) on the device would inflate the measured peak memory run by run.
    """
    if iters < 1 or warmup < 0:
        raise ValueError(f"need iters >= 1 and warmup >= 0, got iters={iters}, warmup={warmup}")
    times, kept = [], []
    for i in range(warmup):
        step(i)
    with _MemoryMeter(device) as meter:
        for i in range(warmup, warmup + iters):
            sync(device)
            start = time.perf_counter()
            out = step(i)
            sync(device)
            times.append((time.perf_counter() - start) * 1000.0)
            kept.append(keep(out))
            del out
    return times, kept, meter


def cpu_time_s() -> float:
    """CPU seconds (user + system) this process has used, all its threads (``os.times``).

    With one torch thread this is the work a call does, hardly affected by other jobs on a shared
    machine, unlike wall time; with several threads it sums them (use wall time there).
    """
    t = os.times()
    return t.user + t.system
