"""Export the detector's static parts (``torch.export`` and ONNX) and chain them with eager glue.

The split (the data-dependent steps cannot be one static graph):

* part ``features`` — backbone + FPN + the RPN head's convolutions, for one fixed padded input
  size ``(H, W)``: ``images [B, 3, H, W] -> (p2..p6, rpn logits per level, rpn deltas per level)``.
* parts ``bbox_head{i}`` / ``mask_head{i}`` — each RoI stage's box head (``[K, C, 7, 7] ->
  (logits, deltas)``) and mask head (``[K, C, 14, 14] -> mask logits``) with a dynamic RoI count K.
* eager PyTorch around them — the RPN's proposal selection (anchors, per-level top-k, box decoding,
  NMS: the detector's own :class:`~gcnet.models.rpn.RPNProposals`), RoIAlign, the RoI head's
  score/NMS/cascade logic and mask pasting, run by the original modules so :class:`ExportedDetector`
  gives the same detections as the eager model.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from gcnet.checkpoint import unwrap_model
from gcnet.models.detector import TwoStageDetector
from gcnet.models.tta import flip_tta
from gcnet.structures import Detections, ImageMeta

PartFn = Callable[[Tensor], tuple[Tensor, ...]]


class FeaturePart(nn.Module):
    """Backbone + FPN + RPN head as one static graph (shares the detector's modules)."""

    def __init__(self, detector: TwoStageDetector) -> None:
        super().__init__()
        self.backbone = detector.backbone
        self.neck = detector.neck
        self.rpn_head = detector.rpn_head

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        feats = self.neck(self.backbone(images))
        logits, deltas = self.rpn_head(feats)
        return (*feats, *logits, *deltas)


class _TupleOut(nn.Module):
    """A head whose output is returned as a tuple (one calling convention for every part)."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        out = self.head(x)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _stage_heads(detector: TwoStageDetector, attr: str) -> list[nn.Module]:
    heads = getattr(detector.roi_head, attr, None)
    if heads is None:
        return []
    return list(heads) if isinstance(heads, nn.ModuleList) else [heads]


def as_detector(model: nn.Module) -> TwoStageDetector:
    """``model`` as the detector whose parts export (DDP/compile wrappers unwrapped)."""
    model = unwrap_model(model)
    if not isinstance(model, TwoStageDetector):
        raise TypeError(f"export: expected a gcnet TwoStageDetector, got {type(model).__name__}")
    return model


def detector_parts(model: nn.Module) -> dict[str, nn.Module]:
    """The exportable parts of a ``TwoStageDetector`` by name (``features``, ``bbox_head0``, ...)."""
    detector = as_detector(model)
    parts: dict[str, nn.Module] = {"features": FeaturePart(detector)}
    for i, head in enumerate(_stage_heads(detector, "bbox_head")):
        parts[f"bbox_head{i}"] = _TupleOut(head)
    for i, head in enumerate(_stage_heads(detector, "mask_head")):
        parts[f"mask_head{i}"] = _TupleOut(head)
    return parts


def _example_inputs(detector: TwoStageDetector, image_size: tuple[int, int], batch: int = 1) -> dict[str, Tensor]:
    """Example inputs for each part (random; shapes are what matter) on the detector's device."""
    h, w = image_size
    if h % 32 or w % 32:
        raise ValueError(f"export: image_size {image_size} must be the padded input, a multiple of 32")
    param = next(detector.parameters())
    roi = detector.cfg.roi
    gen = torch.Generator().manual_seed(0)
    rand = lambda *s: torch.randn(*s, generator=gen).to(param.device)  # noqa: E731
    examples = {"features": rand(batch, 3, h, w)}
    for name in detector_parts(detector):
        if name.startswith("bbox_head"):
            examples[name] = rand(3, roi.in_channels, roi.bbox_roi_size, roi.bbox_roi_size)
        elif name.startswith("mask_head"):
            examples[name] = rand(3, roi.in_channels, roi.mask_roi_size, roi.mask_roi_size)
    return examples


def export_program(
    model: nn.Module, image_size: tuple[int, int], batch: int = 1
) -> dict[str, torch.export.ExportedProgram]:
    """``torch.export`` each part: ``features`` at the padded ``image_size`` (static), heads with a dynamic K."""
    model = as_detector(model).eval()
    examples = _example_inputs(model, image_size, batch)
    programs = {}
    with torch.no_grad():
        for name, part in detector_parts(model).items():
            dynamic = None if name == "features" else ({0: torch.export.Dim(f"num_rois_{name}", min=0)},)
            programs[name] = torch.export.export(part, (examples[name],), dynamic_shapes=dynamic, strict=False)
    return programs


def _folder(path: str | Path, caller: str) -> Path:
    """The output folder (created): one file per part goes in it, so a file name is refused."""
    folder = Path(path)
    if folder.suffix in (".onnx", ".pt2"):
        raise ValueError(f"{caller}: path {folder} must be a folder (one file per part)")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def save_programs(programs: dict[str, torch.export.ExportedProgram], path: str | Path) -> dict[str, Path]:
    """Write each program of :func:`export_program` as ``<part>.pt2`` (``torch.export.save``) into
    the folder ``path`` (created) -> {part name: file}; :func:`load_programs` reads them back."""
    folder = _folder(path, "save_programs")
    files = {}
    for name, program in programs.items():
        files[name] = folder / f"{name}.pt2"
        torch.export.save(program, files[name])
    return files


def load_programs(path: str | Path) -> dict[str, torch.export.ExportedProgram]:
    """The ``*.pt2`` programs of a folder :func:`save_programs` wrote, by part name
    (for :meth:`DetectorParts.from_programs`)."""
    files = sorted(Path(path).glob("*.pt2"))
    if not files:
        raise FileNotFoundError(f"load_programs: no .pt2 files in {path}")
    return {f.stem: torch.export.load(f) for f in files}


def _onnx_export(part: nn.Module, example: Tensor, path: Path, dynamic: bool, opset: int) -> None:
    num_out = len(part(example))
    outputs = [f"out{i}" for i in range(num_out)]
    axes = {"x": {0: "num_rois"}, **{o: {0: "num_rois"} for o in outputs}} if dynamic else None
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)

        use_dynamo = True
    except ImportError:
        use_dynamo = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            part,
            (example,),
            str(path),
            input_names=["x"],
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=use_dynamo,
        )


def export_onnx(model: nn.Module, path: str | Path, image_size: tuple[int, int], opset: int = 17) -> dict[str, Path]:
    """Write one ONNX file per part into the folder ``path`` (created) -> {part name: file}.

    Uses the dynamo exporter when ``onnxscript`` is installed, the TorchScript-based one otherwise.
    Each file has one input ``x`` and outputs ``out0..``; head files have a dynamic first axis.
    """
    folder = _folder(path, "export_onnx")
    model = as_detector(model).eval()
    examples = _example_inputs(model, image_size)
    files = {}
    with torch.no_grad():
        for name, part in detector_parts(model).items():
            files[name] = folder / f"{name}.onnx"
            _onnx_export(part, examples[name], files[name], dynamic=name != "features", opset=opset)
    return files


def accept_empty_batch(fn: PartFn) -> PartFn:
    """``fn`` made to take a size-0 batch: it runs one zero row and returns each output's first 0 rows.

    A RoI head part sees 0 RoIs whenever an image has no proposals, and some runtimes reject that
    although the dim's range allows it: torch 2.4's exported-program input check (its sizes are
    positive symbols, so ``s0 = 0`` has no solution; 1 does) and some ONNX runtimes.
    """

    def run(x: Tensor) -> tuple[Tensor, ...]:
        if x.shape[0] > 0:
            return fn(x)
        return tuple(o[:0] for o in fn(x.new_zeros((1, *x.shape[1:]))))

    return run


def onnx_runner(file: str | Path) -> PartFn:
    """An onnxruntime (CPU) session as a part function: Tensor in, tuple of Tensors out."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])

    def run(x: Tensor) -> tuple[Tensor, ...]:
        outs = session.run(None, {"x": x.detach().float().cpu().numpy()})
        return tuple(torch.from_numpy(o).to(x.device) for o in outs)

    return accept_empty_batch(run)


def program_runner(program: torch.export.ExportedProgram) -> PartFn:
    """An exported program as a part function: Tensor in, tuple of Tensors out (any batch size, 0 too)."""
    module = program.module()

    def run(x: Tensor) -> tuple[Tensor, ...]:
        return tuple(module(x))

    return accept_empty_batch(run)


class _HeadCall(nn.Module):
    """Stands in for a box or mask head inside the RoI head, calling an exported part instead.

    Attribute reads the RoI head may do (``num_classes``, ``reg_class_agnostic``...) go to the original.
    """

    def __init__(self, fn: PartFn, original: nn.Module, single: bool) -> None:
        super().__init__()
        self.fn = fn
        self.single = single
        object.__setattr__(self, "original", original)  # not a child: keep its parameters out

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "original"), name)

    def forward(self, x: Tensor):
        outs = self.fn(x)
        return outs[0] if self.single else outs


@dataclass
class DetectorParts:
    """The part functions an :class:`ExportedDetector` chains (torch.export programs or ONNX sessions).

    A head part must take a batch of 0 RoIs; wrap one that cannot in :func:`accept_empty_batch`
    (the runners here are wrapped).
    """

    features: PartFn
    bbox_heads: Sequence[PartFn]
    mask_heads: Sequence[PartFn]

    @classmethod
    def from_programs(cls, programs: dict[str, torch.export.ExportedProgram]) -> DetectorParts:
        return cls._from(lambda n: program_runner(programs[n]), programs.keys())

    @classmethod
    def from_onnx(cls, files: dict[str, Path]) -> DetectorParts:
        return cls._from(lambda n: onnx_runner(files[n]), files.keys())

    @classmethod
    def _from(cls, make: Callable[[str], PartFn], names) -> DetectorParts:
        names = sorted(names)
        return cls(
            features=make("features"),
            bbox_heads=[make(n) for n in names if n.startswith("bbox_head")],
            mask_heads=[make(n) for n in names if n.startswith("mask_head")],
        )


class ExportedDetector(nn.Module):
    """Exported parts + the detector's own eager glue; same inputs and outputs as the detector.

    The RPN's proposal selection (the detector's ``rpn_proposals``, test limits) and the RoI head
    (RoIAlign, scores, NMS, cascade refinement, mask pasting) run eagerly; only their heads are
    swapped for the parts. The detector's ``test_flip`` holds here too (the parts run twice).
    """

    def __init__(self, detector: TwoStageDetector, parts: DetectorParts) -> None:
        super().__init__()
        self.rpn_proposals = detector.rpn_proposals
        self.class_names = getattr(detector, "class_names", ())
        self.num_levels = len(detector.cfg.rpn.strides)
        self.cfg = detector.cfg  # test_flip and the RoI settings, as on the detector
        self.features = parts.features
        self.roi_head = self._swap_heads(detector.roi_head, parts)

    @staticmethod
    def _swap_heads(roi_head: nn.Module, parts: DetectorParts) -> nn.Module:
        swapped = copy.copy(roi_head)  # shallow: parameters shared, children dict replaced below
        swapped._modules = dict(roi_head._modules)
        for attr, fns, single in (("bbox_head", parts.bbox_heads, False), ("mask_head", parts.mask_heads, True)):
            original = roi_head._modules.get(attr)
            if original is None:
                continue
            if isinstance(original, nn.ModuleList):
                if len(fns) != len(original):
                    raise ValueError(f"ExportedDetector: {len(fns)} {attr} parts for {len(original)} stages")
                swapped._modules[attr] = nn.ModuleList(_HeadCall(f, o, single) for f, o in zip(fns, original))
            else:
                if len(fns) != 1:
                    raise ValueError(f"ExportedDetector: expected one {attr} part, got {len(fns)}")
                swapped._modules[attr] = _HeadCall(fns[0], original, single)
        return swapped

    @torch.no_grad()
    def forward(self, images: Tensor, metas: list[ImageMeta]) -> list[Detections]:
        if len(metas) != images.shape[0]:
            raise ValueError(f"ExportedDetector: {images.shape[0]} images but {len(metas)} metas")
        if self.cfg.test_flip:
            roi = self.cfg.roi
            return flip_tta(self.predict, images, metas, roi.nms_iou, roi.class_agnostic_nms, roi.max_per_img)
        return self.predict(images, metas)

    def predict(self, images: Tensor, metas: list[ImageMeta]) -> list[Detections]:
        """Detections of one view of the batch, as :meth:`TwoStageDetector.predict`."""
        outs = self.features(images)
        n = self.num_levels
        if len(outs) != 3 * n:
            raise ValueError(f"ExportedDetector: features part gave {len(outs)} outputs, expected {3 * n}")
        feats, cls_outs, reg_outs = list(outs[:n]), outs[n : 2 * n], outs[2 * n :]
        proposals = self.rpn_proposals(cls_outs, reg_outs, metas, training=False)
        detections = self.roi_head(feats, proposals, metas)
        for d in detections:
            d.class_names = self.class_names
        return detections
