"""StandardRoIHead (Mask R-CNN): post-processing order, empty cases, batching, hand-made losses."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import nms

from gcnet.boxes import MaxIoUAssigner, RandomSampler
from gcnet.config import RoIConfig
from gcnet.models.postprocess import paste_masks
from gcnet.models.roi import StandardRoIHead, boxes_to_rois, multiclass_nms
from gcnet.models.roi.targets import sample_rois
from gcnet.structures import ImageMeta, Targets

C = 3  # classes in the tiny heads


def tiny_cfg(**kw) -> RoIConfig:
    return RoIConfig(num_classes=C, in_channels=4, fc_channels=8, mask_convs=1, **kw)


def make_feats(batch: int, seed: int = 0, size: int = 64) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 4, size // s, size // s, generator=g) for s in (4, 8, 16, 32, 64)]


def random_proposals(n: int, seed: int, size: float = 64.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size * 0.7
    wh = torch.rand(n, 2, generator=g) * size * 0.4 + 4
    boxes = torch.cat([xy, (xy + wh).clamp(max=size)], dim=1)
    return torch.cat([boxes, torch.rand(n, 1, generator=g)], dim=1)


META = ImageMeta(img_shape=(64, 64), ori_shape=(128, 128), scale_factor=(0.5, 0.5))


def hand_decode(box: torch.Tensor, d: torch.Tensor, stds: tuple[float, ...], h: float, w: float) -> torch.Tensor:
    d = d * torch.tensor(stds)
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    bw, bh = box[2] - box[0], box[3] - box[1]
    lim = abs(math.log(16 / 1000))
    ncx, ncy = cx + bw * d[0], cy + bh * d[1]
    nw, nh = bw * d[2].clamp(-lim, lim).exp(), bh * d[3].clamp(-lim, lim).exp()
    out = torch.stack([ncx - nw / 2, ncy - nh / 2, ncx + nw / 2, ncy + nh / 2])
    return torch.stack([out[0].clamp(0, w), out[1].clamp(0, h), out[2].clamp(0, w), out[3].clamp(0, h)])


# ---------------------------------------------------------------- multiclass NMS
def test_multiclass_nms_by_hand() -> None:
    boxes = torch.tensor(
        [
            [[0.0, 0, 10, 10], [0, 0, 10, 10]],
            [[1.0, 0, 11, 10], [50, 50, 60, 60]],
            [[30.0, 30, 40, 40], [0, 0, 10, 10]],
        ]
    )  # [roi, class, 4]
    scores = torch.tensor(
        [
            [0.50, 0.30, 0.20],
            [0.40, 0.05, 0.55],  # class 1 at exactly 0.05 is dropped (strict >)
            [0.06, 0.25, 0.69],
        ]
    )
    b, s, lab = multiclass_nms(boxes, scores, score_thr=0.05, iou_thr=0.5, max_num=100)
    # class 0: roi0 (0.50) suppresses roi1 (IoU 0.82); roi2 kept. class 1: roi0 and roi2 are
    # the same box -> roi0 (0.30) kept. Classes never suppress each other.
    assert s.tolist() == pytest.approx([0.50, 0.30, 0.06])
    assert lab.tolist() == [0, 1, 0]
    assert b.tolist() == [[0, 0, 10, 10], [0, 0, 10, 10], [30, 30, 40, 40]]
    b2, s2, l2 = multiclass_nms(boxes, scores, 0.05, 0.5, max_num=2)
    assert s2.tolist() == pytest.approx([0.50, 0.30])
    # shared (class-agnostic) boxes are used for every class
    shared = torch.tensor([[0.0, 0, 10, 10], [100, 100, 110, 110]])
    _, s3, l3 = multiclass_nms(shared, torch.tensor([[0.2, 0.3, 0.5], [0.1, 0.04, 0.86]]), 0.05, 0.5, 100)
    assert s3.tolist() == pytest.approx([0.3, 0.2, 0.1]) and l3.tolist() == [1, 0, 0]


def test_multiclass_nms_is_roi_major_for_equal_scores() -> None:
    # Equal scores: the (roi, class) flattening order decides which survives a tie in NMS
    boxes = torch.tensor([[[0.0, 0, 10, 10]], [[0.0, 0, 10, 10]]])
    scores = torch.tensor([[0.5, 0.5], [0.5, 0.5]])
    b, s, lab = multiclass_nms(boxes, scores, 0.05, 0.5, 100)
    assert len(s) == 1 and lab.tolist() == [0]


# ---------------------------------------------------------------- inference
def independent_predict(head: StandardRoIHead, feats, proposals, meta: ImageMeta, max_num: int):
    """Re-derive the test path: softmax, per-class decode by hand, per-class NMS loop, top-k."""
    rois = boxes_to_rois([proposals])
    cls, deltas = head.bbox_head(head.bbox_roi_extractor(feats, rois))
    probs = torch.softmax(cls, -1)
    h, w = meta.img_shape
    cand = []
    for r in range(rois.shape[0]):
        for c in range(C):
            score = probs[r, c].item()
            if score > 0.05:
                box = hand_decode(proposals[r, :4], deltas[r, 4 * c : 4 * c + 4], (0.1, 0.1, 0.2, 0.2), h, w)
                cand.append((score, c, box))
    kept = []
    for c in range(C):
        mine = [x for x in cand if x[1] == c]
        if not mine:
            continue
        keep = nms(torch.stack([x[2] for x in mine]), torch.tensor([x[0] for x in mine]), 0.5)
        kept += [mine[i] for i in keep.tolist()]
    kept.sort(key=lambda x: -x[0])
    return kept[:max_num]


def test_predict_matches_independent_formulation() -> None:
    torch.manual_seed(0)
    head = StandardRoIHead(tiny_cfg(max_per_img=10)).eval()
    with torch.no_grad():
        head.bbox_head.fc_reg.weight.normal_(std=0.3)
        head.bbox_head.fc_cls.weight.normal_(std=0.5)
    feats = make_feats(1)
    props = random_proposals(30, seed=1)
    with torch.no_grad():
        det = head(feats, [props], [META])[0]
        want = independent_predict(head, feats, props, META, 10)
    assert len(det) == len(want) == 10
    assert det.labels.tolist() == [c for _, c, _ in want]
    torch.testing.assert_close(det.scores, torch.tensor([s for s, _, _ in want]))
    want_boxes = torch.stack([b for _, _, b in want]) / 0.5  # back to the original image
    torch.testing.assert_close(det.boxes, want_boxes, atol=1e-4, rtol=1e-5)
    # masks: label channel of the mask head on the kept (resized) boxes, pasted into ori_shape
    with torch.no_grad():
        resized = torch.stack([b for _, _, b in want])
        logits = head.mask_head(head.mask_roi_extractor(feats, boxes_to_rois([resized])))
        probs = torch.sigmoid(logits[torch.arange(10), det.labels])
    assert det.masks.shape == (10, 128, 128) and det.masks.full().dtype == torch.bool
    assert torch.equal(det.masks.full(), paste_masks(probs, want_boxes, (128, 128)))


def test_no_detections_gives_empty_tensors_of_the_right_shape() -> None:
    head = StandardRoIHead(tiny_cfg()).eval()
    with torch.no_grad():
        head.bbox_head.fc_cls.bias[C] = 20.0  # background wins everywhere
        det = head(make_feats(2), [random_proposals(5, 1), torch.zeros(0, 5)], [META, META])
    for d in det:
        assert d.boxes.shape == (0, 4) and d.scores.shape == (0,) and d.labels.shape == (0,)
        assert d.masks.shape == (0, 128, 128) and d.masks.full().dtype == torch.bool
        assert d.labels.dtype == torch.int64
    boxes_only = StandardRoIHead(tiny_cfg(), with_mask=False).eval()
    with torch.no_grad():
        d = boxes_only(make_feats(1), [random_proposals(5, 1)], [META])[0]
    assert d.masks is None and len(d) > 0
    assert not any(k.startswith("mask_head") for k in boxes_only.state_dict())


def test_batch_of_two_equals_each_image_alone() -> None:
    torch.manual_seed(0)
    head = StandardRoIHead(tiny_cfg()).eval()
    with torch.no_grad():
        head.bbox_head.fc_reg.weight.normal_(std=0.3)
        head.bbox_head.fc_cls.weight.normal_(std=0.5)
    feats = make_feats(2, seed=3)
    props = [random_proposals(20, seed=4), random_proposals(13, seed=5)]
    metas = [META, ImageMeta(img_shape=(60, 50), ori_shape=(90, 75), scale_factor=(50 / 75, 60 / 90))]
    with torch.no_grad():
        both = head(feats, props, metas)
        for i in range(2):
            alone = head([f[i : i + 1] for f in feats], [props[i]], [metas[i]])[0]
            assert torch.equal(both[i].labels, alone.labels)
            torch.testing.assert_close(both[i].boxes, alone.boxes)
            torch.testing.assert_close(both[i].scores, alone.scores)
            assert torch.equal(both[i].masks.full(), alone.masks.full())
    assert both[1].masks.shape[1:] == (90, 75)
    assert both[1].boxes[:, 0::2].max() <= 75 + 1e-3 and both[1].boxes[:, 1::2].max() <= 90 + 1e-3


# ---------------------------------------------------------------- training
def hand_encode(p: list[float], g: list[float], stds: tuple[float, ...]) -> list[float]:
    pw, ph, gw, gh = p[2] - p[0], p[3] - p[1], g[2] - g[0], g[3] - g[1]
    d = [
        ((g[0] + g[2]) / 2 - (p[0] + p[2]) / 2) / pw,
        ((g[1] + g[3]) / 2 - (p[1] + p[3]) / 2) / ph,
        math.log(gw / pw),
        math.log(gh / ph),
    ]
    return [x / s for x, s in zip(d, stds)]


GT = [10.0, 10.0, 40.0, 40.0]
# IoU with GT: P1 0.933 (pos), P2 0 (neg), P3 0.5 (pos at >= 0.5), P4 0.467 (neg)
P1, P2, P3, P4 = [12.0, 10, 40, 40], [40.0, 40, 60, 60], [10.0, 10, 25, 40], [10.0, 10, 24, 40]
CLS_BIAS = [0.2, 1.0, -0.5, 0.3]  # last = background
MASK_BIAS = [0.3, -0.7, 1.1]


def bias_only(head: torch.nn.Module) -> None:
    """Zero every weight; the heads then output their biases whatever the features are."""
    with torch.no_grad():
        for p in head.parameters():
            p.zero_()
        for bh in head.bbox_head if isinstance(head.bbox_head, torch.nn.ModuleList) else [head.bbox_head]:
            bh.fc_cls.bias.copy_(torch.tensor(CLS_BIAS))
        for mh in head.mask_head if isinstance(head.mask_head, torch.nn.ModuleList) else [head.mask_head]:
            mh.conv_logits.bias.copy_(torch.tensor(MASK_BIAS))


def neg_log_softmax(i: int) -> float:
    return -(CLS_BIAS[i] - math.log(sum(math.exp(b) for b in CLS_BIAS)))


def full_mask_targets() -> Targets:
    return Targets(boxes=torch.tensor([GT]), labels=torch.tensor([1]), masks=torch.ones(1, 64, 64, dtype=torch.uint8))


def test_losses_on_a_hand_made_case() -> None:
    head = StandardRoIHead(tiny_cfg())
    bias_only(head)
    props = torch.tensor([P1, P2, P3, P4])
    losses = head(make_feats(1), [props], [META], [full_mask_targets()])
    assert set(losses) == {"loss_cls", "loss_bbox", "loss_mask"}
    # sampled: gt, P1, P3 positive (label 1), P2, P4 negative (background) -> 5 RoIs
    want_cls = (3 * neg_log_softmax(1) + 2 * neg_log_softmax(C)) / 5
    stds = (0.1, 0.1, 0.2, 0.2)
    l1 = sum(abs(x) for p in (GT, P1, P3) for x in hand_encode(p, GT, stds))
    assert losses["loss_cls"].item() == pytest.approx(want_cls, rel=1e-5)
    assert losses["loss_bbox"].item() == pytest.approx(l1 / 5, rel=1e-5)  # / all sampled RoIs
    # every target cell is 1 (full gt bitmap); logit of class 1 is -0.7 -> BCE = softplus(0.7)
    assert losses["loss_mask"].item() == pytest.approx(math.log1p(math.exp(0.7)), rel=1e-5)


def test_low_quality_matching_runs_on_proposals_before_gt_is_added() -> None:
    # gt A = [0,0,10,10], gt B = [0,0,10,12]; proposal P = [0,0,10,11] has IoU 0.909 with A and
    # 0.917 with B (max -> B), Q = B has IoU 1 with B. P is A's best proposal, so low-quality
    # matching hands P to A. Had the gts been added before assigning, A's best would be itself.
    tg = Targets(boxes=torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 12]]), labels=torch.tensor([0, 2]))
    props = torch.tensor([[0.0, 0, 10, 11], [0.0, 0, 10, 12]])
    s = sample_rois(props, tg.boxes, tg.labels, MaxIoUAssigner(0.5, 0.5, 0.5), RandomSampler(512, 0.25), C)
    # candidates: gt A, gt B, P, Q -- all positive
    assert s.num_pos == 4 and s.labels.tolist() == [0, 2, 0, 2]
    assert s.pos_is_gt.tolist() == [True, True, False, False]
    assert s.pos_gt_inds.tolist() == [0, 1, 0, 1]
    no_lq = sample_rois(props, tg.boxes, tg.labels, MaxIoUAssigner(0.5, 0.5, 0.5, False), RandomSampler(512, 0.25), C)
    assert no_lq.labels.tolist() == [0, 2, 2, 2]


def test_image_without_gt_and_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    head = StandardRoIHead(tiny_cfg(num_samples=16))
    feats = [f.requires_grad_() for f in make_feats(2, seed=7)]
    props = [random_proposals(40, seed=8), random_proposals(10, seed=9)]
    targets = [
        Targets(
            boxes=torch.tensor([[5.0, 5, 30, 40], [20, 20, 60, 50]]),
            labels=torch.tensor([0, 2]),
            masks=(torch.rand(2, 64, 64) > 0.3).to(torch.uint8),
        ),
        Targets(
            boxes=torch.zeros(0, 4),
            labels=torch.zeros(0, dtype=torch.long),
            masks=torch.zeros(0, 64, 64, dtype=torch.uint8),
        ),
    ]
    losses = head(feats, props, [META, META], targets)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert feats[0].grad is not None and feats[0].grad.abs().sum() > 0


def test_bf16_autocast_runs() -> None:
    head = StandardRoIHead(tiny_cfg())
    feats = make_feats(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = head(feats, [random_proposals(20, 2)], [META], [full_mask_targets()])
        head.eval()
        det = head(feats, [random_proposals(20, 2)], [META])[0]
    assert all(torch.isfinite(v.float()) for v in losses.values())
    assert det.boxes.dtype == torch.float32 and det.masks.shape[1:] == (128, 128)


def test_bad_inputs_are_reported() -> None:
    head = StandardRoIHead(tiny_cfg())
    with pytest.raises(ValueError, match="proposal sets"):
        head(make_feats(1), [torch.zeros(0, 5)] * 2, [META])
    with pytest.raises(ValueError, match="no masks"):
        head(make_feats(1), [torch.zeros(0, 5)], [META], [Targets(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))])
    with pytest.raises(ValueError, match="1 stage"):
        StandardRoIHead(RoIConfig(stages=(RoIConfig().stages[0],) * 2))
