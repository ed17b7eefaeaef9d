"""CascadeRoIHead: keys, logit averaging, RoI refinement chain, mask averaging, hand-made losses."""

from __future__ import annotations

import math

import pytest
import torch

from gcnet.config import RoIConfig
from gcnet.models.roi import CascadeRoIHead, cascade_stages
from gcnet.structures import ImageMeta, Targets

C = 3
META = ImageMeta(img_shape=(64, 64), ori_shape=(128, 128), scale_factor=(0.5, 0.5))


def tiny_cfg(**kw) -> RoIConfig:
    return RoIConfig(num_classes=C, in_channels=4, fc_channels=8, mask_convs=1, stages=cascade_stages(), **kw)


def make_feats(batch: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 4, 64 // s, 64 // s, generator=g) for s in (4, 8, 16, 32, 64)]


def random_proposals(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 45
    wh = torch.rand(n, 2, generator=g) * 25 + 4
    return torch.cat([xy, (xy + wh).clamp(max=64), torch.rand(n, 1, generator=g)], dim=1)


def set_biases(head: CascadeRoIHead, cls: list[list[float]], reg: list[list[float]], mask: list[list[float]]) -> None:
    """Zero all weights and give stage t the biases cls[t], reg[t], mask[t]."""
    with torch.no_grad():
        for p in head.parameters():
            p.zero_()
        for t in range(3):
            head.bbox_head[t].fc_cls.bias.copy_(torch.tensor(cls[t]))
            head.bbox_head[t].fc_reg.bias.copy_(torch.tensor(reg[t]))
            head.mask_head[t].conv_logits.bias.copy_(torch.tensor(mask[t]))


def test_keys_and_stage_settings() -> None:
    head = CascadeRoIHead(RoIConfig(stages=cascade_stages()))
    sd = head.state_dict()
    assert len(sd) == 60
    for t in range(3):
        assert tuple(sd[f"bbox_head.{t}.fc_reg.weight"].shape) == (4, 1024)
        assert tuple(sd[f"bbox_head.{t}.fc_cls.weight"].shape) == (81, 1024)
        assert tuple(sd[f"mask_head.{t}.conv_logits.weight"].shape) == (80, 256, 1, 1)
    stages = cascade_stages()
    assert [s.pos_iou for s in stages] == [0.5, 0.6, 0.7]
    assert [s.loss_weight for s in stages] == [1.0, 0.5, 0.25]
    assert stages[2].target_stds == (0.033, 0.033, 0.067, 0.067)
    assert not any(s.match_low_quality for s in stages)


def test_scores_are_softmax_of_mean_logits_not_mean_of_probabilities() -> None:
    head = CascadeRoIHead(tiny_cfg()).eval()
    logits = [[4.0, 0.0, 1.0, 0.0], [-4.0, 0.0, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0]]
    set_biases(head, logits, [[0.0] * 4] * 3, [[0.0] * 3] * 3)
    with torch.no_grad():
        det = head(make_feats(1), [torch.tensor([[10.0, 10, 30, 30, 1.0]])], [META])[0]
    mean_logits = torch.tensor(logits).mean(0)
    want = torch.softmax(mean_logits, 0)[:C]
    mean_probs = torch.softmax(torch.tensor(logits), 1).mean(0)[:C]
    assert (want - mean_probs).abs().max() > 0.1  # the two rules disagree here
    got = torch.zeros(C)
    got[det.labels] = det.scores
    torch.testing.assert_close(got, want)


def test_rois_are_refined_stage_by_stage() -> None:
    # dx biases 1, 1, 3 with stds 0.1, 0.05, 0.033 on a 20 px wide box: shifts 2, then 1, then 1.98
    head = CascadeRoIHead(tiny_cfg()).eval()
    cls = [[5.0, 0.0, 0.0, 0.0]] * 3
    reg = [[1.0, 0, 0, 0], [1.0, 0, 0, 0], [3.0, 0, 0, 0]]
    set_biases(head, cls, reg, [[0.0] * 3] * 3)
    with torch.no_grad():
        det = head(make_feats(1), [torch.tensor([[10.0, 10, 30, 30, 1.0]])], [META])[0]
    assert det.labels.tolist() == [0]
    x1 = 10 + 2 + 1 + 0.033 * 20 * 3
    torch.testing.assert_close(det.boxes[0], torch.tensor([x1, 10, x1 + 20, 30]) / 0.5)
    # refinement is clipped to the image at every stage
    with torch.no_grad():
        reg_far = [[40.0, 0, 0, 0], [0.0, 0, 0, 0], [0.0, 0, 0, 0]]
        set_biases(head, cls, reg_far, [[0.0] * 3] * 3)
        det = head(make_feats(1), [torch.tensor([[10.0, 10, 30, 30, 1.0]])], [META])[0]
    # stage 1 moves x by 80 px -> clipped to [64, 64]: a zero-width box
    assert det.boxes[0, 0].item() == pytest.approx(128.0) and det.boxes[0, 2].item() == pytest.approx(128.0)


@pytest.mark.parametrize(
    "mask_bias, inside",
    [
        ((-6.0, 1.2, 1.2), True),  # mean of sigmoids 0.513; sigmoid of mean logit 0.23 would say False
        ((-6.0, 0.3, 0.3), False),  # mean of sigmoids 0.384; the last stage alone (0.574) would say True
    ],
)
def test_masks_average_the_sigmoids_of_all_stages(mask_bias: tuple[float, ...], inside: bool) -> None:
    head = CascadeRoIHead(tiny_cfg()).eval()
    cls = [[5.0, 0.0, 0.0, 0.0]] * 3
    set_biases(head, cls, [[0.0] * 4] * 3, [[b, -9.0, -9.0] for b in mask_bias])
    with torch.no_grad():
        det = head(make_feats(1), [torch.tensor([[10.0, 10, 30, 30, 1.0]])], [META])[0]
    assert det.masks.shape == (1, 128, 128)
    # box [20, 20, 60, 60] in the original image; interior pixels see the constant mean map
    assert bool(det.masks.mask(0)[40, 40]) is inside
    # the outermost pixel ring samples 0.15 cell outside the map (zero padding): 0.85 * 0.513 < 0.5
    assert int(det.masks.mask(0).sum()) == (38 * 38 if inside else 0)


def test_empty_proposals_and_batching() -> None:
    torch.manual_seed(0)
    head = CascadeRoIHead(tiny_cfg()).eval()
    with torch.no_grad():
        for bh in head.bbox_head:
            bh.fc_cls.weight.normal_(std=0.5)
            bh.fc_reg.weight.normal_(std=0.3)
    feats = make_feats(2, seed=1)
    props = [random_proposals(15, 2), random_proposals(9, 3)]
    metas = [META, ImageMeta(img_shape=(60, 50), ori_shape=(90, 75), scale_factor=(50 / 75, 60 / 90))]
    with torch.no_grad():
        both = head(feats, props, metas)
        for i in range(2):
            alone = head([f[i : i + 1] for f in feats], [props[i]], [metas[i]])[0]
            assert len(alone) > 0
            assert torch.equal(both[i].labels, alone.labels)
            torch.testing.assert_close(both[i].boxes, alone.boxes)
            torch.testing.assert_close(both[i].scores, alone.scores)
            assert torch.equal(both[i].masks.full(), alone.masks.full())
        empty = head(make_feats(1), [torch.zeros(0, 5)], [META])[0]
    assert empty.boxes.shape == (0, 4) and empty.masks.shape == (0, 128, 128)


# ---------------------------------------------------------------- training
GT = [10.0, 10.0, 40.0, 40.0]
# IoU with GT: P1 0.933, P2 0, P3 0.5, P4 0.467
P1, P2, P3, P4 = [12.0, 10, 40, 40], [40.0, 40, 60, 60], [10.0, 10, 25, 40], [10.0, 10, 24, 40]
CLS_BIAS = [0.2, 1.0, -0.5, 0.3]


def _smooth_l1_sum(values: list[float]) -> float:
    return sum(0.5 * v * v if abs(v) < 1.0 else abs(v) - 0.5 for v in values)


def _encode(p: list[float], g: list[float], stds: tuple[float, ...]) -> list[float]:
    pw, ph = p[2] - p[0], p[3] - p[1]
    d = [
        ((g[0] + g[2]) - (p[0] + p[2])) / 2 / pw,
        ((g[1] + g[3]) - (p[1] + p[3])) / 2 / ph,
        math.log((g[2] - g[0]) / pw),
        math.log((g[3] - g[1]) / ph),
    ]
    return [x / s for x, s in zip(d, stds)]


def test_losses_on_a_hand_made_case() -> None:
    head = CascadeRoIHead(tiny_cfg())
    set_biases(head, [CLS_BIAS] * 3, [[0.0] * 4] * 3, [[0.3, -0.7, 1.1]] * 3)
    targets = [Targets(torch.tensor([GT]), torch.tensor([1]), torch.ones(1, 64, 64, dtype=torch.uint8))]
    losses = head(make_feats(1), [torch.tensor([P1, P2, P3, P4])], [META], targets)
    assert set(losses) == {f"s{t}.{k}" for t in range(3) for k in ("loss_cls", "loss_bbox", "loss_mask")}
    lse = math.log(sum(math.exp(b) for b in CLS_BIAS))
    a, b = lse - CLS_BIAS[1], lse - CLS_BIAS[C]  # CE of a positive (label 1) and of a negative
    stds = [s.target_stds for s in cascade_stages()]
    # stage 0 (IoU 0.5): gt, P1, P3 positive; P2, P4 negative.
    # stages 1, 2 (IoU 0.6, 0.7): candidates are stage t-1's sampled RoIs without the added gt
    # (zero deltas leave them in place) plus the gt again: gt, P1 positive; P3, P2, P4 negative.
    want = {
        "s0.loss_cls": (3 * a + 2 * b) / 5,
        "s1.loss_cls": 0.5 * (2 * a + 3 * b) / 5,
        "s2.loss_cls": 0.25 * (2 * a + 3 * b) / 5,
        "s0.loss_bbox": _smooth_l1_sum([v for p in (GT, P1, P3) for v in _encode(p, GT, stds[0])]) / 5,
        "s1.loss_bbox": 0.5 * _smooth_l1_sum([v for p in (GT, P1) for v in _encode(p, GT, stds[1])]) / 5,
        "s2.loss_bbox": 0.25 * _smooth_l1_sum([v for p in (GT, P1) for v in _encode(p, GT, stds[2])]) / 5,
    }
    for t, w in enumerate((1.0, 0.5, 0.25)):
        want[f"s{t}.loss_mask"] = w * math.log1p(math.exp(0.7))
    for k, v in want.items():
        assert losses[k].item() == pytest.approx(v, rel=1e-5), k


def test_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    head = CascadeRoIHead(tiny_cfg(num_samples=32))
    feats = [f.requires_grad_() for f in make_feats(2, seed=5)]
    props = [random_proposals(40, 6), random_proposals(30, 7)]
    targets = [
        Targets(
            torch.tensor([[5.0, 5, 30, 40], [20, 20, 60, 50]]),
            torch.tensor([0, 2]),
            (torch.rand(2, 64, 64) > 0.3).to(torch.uint8),
        ),
        Targets(torch.tensor([[10.0, 30, 50, 60]]), torch.tensor([1]), torch.ones(1, 64, 64, dtype=torch.uint8)),
    ]
    losses = head(feats, props, [META, META], targets)
    assert len(losses) == 9 and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_no_roi_at_all_still_gives_every_stage_key_and_gradient() -> None:
    """No proposal and no gt on this process (e.g. one rank under DDP): the stages run on empty RoIs
    instead of stopping, so the loss keys (all-reduced for the log) and the used parameters (DDP's
    gradient buckets) are the same as on a process with RoIs; every loss is zero."""
    head = CascadeRoIHead(tiny_cfg(num_samples=32))
    empty = Targets(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), torch.zeros(0, 64, 64, dtype=torch.uint8))
    losses = head(make_feats(1), [torch.zeros(0, 5)], [META], [empty])
    assert sorted(losses) == sorted(f"s{t}.loss_{k}" for t in range(3) for k in ("cls", "bbox", "mask"))
    assert all(v.item() == 0.0 for v in losses.values())
    sum(losses.values()).backward()
    for name, p in head.named_parameters():
        assert p.grad is not None, name


def test_bf16_autocast_runs() -> None:
    head = CascadeRoIHead(tiny_cfg())
    feats = make_feats(1)
    targets = [Targets(torch.tensor([GT]), torch.tensor([1]), torch.ones(1, 64, 64, dtype=torch.uint8))]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = head(feats, [random_proposals(20, 2)], [META], targets)
        head.eval()
        det = head(feats, [random_proposals(20, 2)], [META])[0]
    assert all(torch.isfinite(v.float()) for v in losses.values())
    assert det.scores.dtype == torch.float32 and det.masks.shape[1:] == (128, 128)
