"""bf16 / fp16 autocast and torch.compile of the whole detector, against eager fp32 (tiny configs).

Weights are random but seeded. The box and class layers are scaled up (x30) so that scores are
spread out (at the original's init every RoI scores ~1/num_classes and any rounding reorders them,
which would test tie-breaking, not precision).
"""

from __future__ import annotations

import shutil

import pytest
import torch
from torchvision.ops import box_iou

pytest.importorskip("gcnet.models.roi")
from gcnet import bench  # noqa: E402
from gcnet.config import DataConfig  # noqa: E402
from gcnet.models.detector import TwoStageDetector  # noqa: E402
from tiny_models import tiny_detector as shared_tiny_detector  # noqa: E402

torch.set_num_threads(1)
DATA = DataConfig(scale=(128, 96))
IMAGE = (96, 128)


def tiny_detector(cascade: bool, seed: int = 0) -> TwoStageDetector:
    """The shared tiny detector with sharpened box heads, so that scores are not near-ties."""
    model = shared_tiny_detector(cascade, seed)
    heads = model.roi_head.bbox_head if cascade else [model.roi_head.bbox_head]
    with torch.no_grad():
        for head in heads:
            head.fc_cls.weight.mul_(30)
            head.fc_reg.weight.mul_(30)
    return model


def _run(model, dtype: str):
    images, metas = bench.synthetic_input(IMAGE, DATA)
    with torch.inference_mode(), bench.autocast_context(torch.device("cpu"), dtype):
        feats = model.extract_features(images)
        dets = model(images, metas)[0]
    return feats, dets


def _match(ref, test):
    """For each reference detection: best IoU with a same-label test detection, and its index."""
    iou = box_iou(ref.boxes, test.boxes)
    iou[ref.labels[:, None] != test.labels[None, :]] = 0
    return iou.max(1) if len(test) else (torch.zeros(len(ref)), torch.zeros(len(ref), dtype=torch.long))


@pytest.mark.parametrize("cascade", [False, True], ids=["mask-rcnn", "cascade"])
def test_bf16_autocast_matches_fp32(cascade):
    """bf16 keeps 8 significand bits (relative step 2^-8 ~ 0.4%), so after ~20 layers features drift
    by ~1% (we allow 3%). Proposals near the top-k / NMS cut can then swap, so we ask that at least
    80% of the fp32 detections have a same-label bf16 box with IoU >= 0.9, matched scores within 0.05
    (softmax of logits scaled x30: a 1% logit error moves a score by a few hundredths at most), and
    matched masks overlapping by IoU >= 0.8."""
    model = tiny_detector(cascade)
    f32_feats, ref = _run(model, "fp32")
    bf_feats, test = _run(model, "bf16")
    assert len(ref) == 10 and len(test) == 10
    assert test.boxes.dtype == torch.float32 and test.scores.dtype == torch.float32
    assert test.masks.full().dtype == torch.bool and test.masks.shape == ref.masks.shape
    for a, b in zip(bf_feats, f32_feats):
        assert a.dtype == torch.bfloat16  # autocast really ran the convs in bf16
        assert ((a.float() - b).norm() / b.norm()) < 0.03
    best, j = _match(ref, test)
    ok = best >= 0.9
    assert ok.float().mean() >= 0.8, best
    assert (ref.scores[ok] - test.scores[j[ok]]).abs().max() <= 0.05
    inter = (ref.masks.full()[ok] & test.masks.full()[j[ok]]).flatten(1).sum(1).float()
    union = (ref.masks.full()[ok] | test.masks.full()[j[ok]]).flatten(1).sum(1).float().clamp(min=1)
    assert (inter / union).min() >= 0.8


@pytest.mark.parametrize("cascade", [False, True], ids=["mask-rcnn", "cascade"])
def test_fp16_autocast_matches_fp32_closely(cascade):
    """fp16 keeps 11 significand bits (2^-11 ~ 0.05%): every detection must match (IoU >= 0.99,
    same label) with scores within 5e-3."""
    model = tiny_detector(cascade)
    _, ref = _run(model, "fp32")
    _, test = _run(model, "fp16")
    best, j = _match(ref, test)
    assert len(test) == len(ref) and best.min() >= 0.99
    assert (ref.scores - test.scores[j]).abs().max() <= 5e-3


def test_bf16_training_step_runs():
    """Autocast training: losses finite, gradients reach the fp32 parameters."""
    model = tiny_detector(False)
    res = bench.benchmark_training_step(model, IMAGE, dtype="bf16", warmup=0, iters=1, data=DATA)
    assert res.extra["last_loss"] > 0
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def _compiler_available() -> bool:
    return shutil.which("cc") is not None or shutil.which("gcc") is not None


def _same_detections(a, b, atol: float) -> None:
    assert torch.equal(a.labels, b.labels)
    torch.testing.assert_close(a.boxes, b.boxes, atol=atol, rtol=0)
    torch.testing.assert_close(a.scores, b.scores, atol=atol, rtol=0)
    assert (a.masks.full() != b.masks.full()).float().mean() <= 1e-3  # a pixel exactly at 0.5 may flip


@pytest.mark.slow
def test_compile_full_detector_equals_eager():
    """Dynamo captures the whole forward (graph breaks at NMS/top-k); aot_eager backend so the
    test runs in ~20 s: same ops, so the detections are identical."""
    model = tiny_detector(False)
    images, metas = bench.synthetic_input(IMAGE, DATA)
    with torch.inference_mode():
        ref = model(images, metas)[0]
        compiled = bench.compile_detector(model, "full", backend="aot_eager")
        out = compiled(images, metas)[0]
        again = compiled(images, metas)[0]
    _same_detections(ref, out, atol=1e-5)
    _same_detections(ref, again, atol=1e-5)


@pytest.mark.slow
def test_compile_static_parts_with_inductor_equals_eager():
    """Inductor-generated kernels (fused, reordered sums) agree with eager to float32 rounding."""
    if not _compiler_available():
        pytest.skip("no C compiler for inductor's CPU backend")
    model = tiny_detector(False)
    images, metas = bench.synthetic_input(IMAGE, DATA)
    with torch.inference_mode():
        ref = model(images, metas)[0]
        compiled = bench.compile_detector(model, "static")
        out = compiled(images, metas)[0]
    assert compiled is not model and isinstance(model.backbone, torch.nn.Module)
    assert not hasattr(model.backbone, "_orig_mod")  # the eager model is left untouched
    _same_detections(ref, out, atol=1e-3)


def test_compile_detector_rejects_bad_scope():
    with pytest.raises(ValueError, match="scope"):
        bench.compile_detector(tiny_detector(False), "everything")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="TwoStageDetector"):
        bench.compile_detector(torch.nn.Linear(2, 2), "static")
