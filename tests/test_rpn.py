"""The RPN's three parts (head, proposal selection, loss): proposals vs a plain per-level
re-implementation; losses vs hand computations; valid anchors follow each image's pad_shape."""

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import nms

from gcnet.config import RPNConfig
from gcnet.data.collate import collate
from gcnet.models.rpn import RPNHead, RPNLoss, RPNProposals
from gcnet.structures import ImageMeta, Targets


def _meta(h, w):
    return ImageMeta(img_shape=(h, w), ori_shape=(h, w), scale_factor=(1.0, 1.0))


class RPN:
    """The three parts built from one config, called the way the detector calls them."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.head = RPNHead(cfg)
        self.proposals = RPNProposals(cfg)
        self.loss = RPNLoss(cfg)

    def __call__(self, feats, metas, targets=None, training=False):
        logits, deltas = self.head(feats)
        proposals = self.proposals(logits, deltas, metas, training=training)
        losses = {} if targets is None else self.loss(logits, deltas, metas, targets)
        return proposals, losses


def _reference_proposals(rpn, feats, i, img_shape, nms_pre, max_per_img, iou_thr):
    """The original's test procedure written plainly: loops over levels, locations and anchors."""
    cfg, head = rpn.cfg, rpn.head
    img_h, img_w = img_shape
    all_boxes, all_scores = [], []
    for x, stride in zip(feats, cfg.strides):
        hid = F.relu(F.conv2d(x[i : i + 1], head.rpn_conv.weight, head.rpn_conv.bias, padding=1))
        logits = F.conv2d(hid, head.rpn_cls.weight, head.rpn_cls.bias)[0]
        deltas = F.conv2d(hid, head.rpn_reg.weight, head.rpn_reg.bias)[0]
        scores, anchors, regs = [], [], []
        for y in range(x.shape[-2]):
            for xx in range(x.shape[-1]):
                for a, ratio in enumerate(cfg.ratios):
                    w = stride * cfg.scales[0] / math.sqrt(ratio)
                    h = stride * cfg.scales[0] * math.sqrt(ratio)
                    cx, cy = xx * stride, y * stride
                    anchors.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
                    scores.append(torch.sigmoid(logits[a, y, xx]))
                    regs.append(deltas[4 * a : 4 * a + 4, y, xx])
        scores = torch.stack(scores)
        anchors = torch.tensor(anchors)
        regs = torch.stack(regs)
        top = scores.topk(min(nms_pre, scores.numel())).indices
        boxes = []
        for (x1, y1, x2, y2), (dx, dy, dw, dh) in zip(anchors[top].tolist(), regs[top].tolist()):
            pw, ph = x2 - x1, y2 - y1
            px, py = x1 + pw / 2, y1 + ph / 2
            clip = abs(math.log(16 / 1000))
            dw, dh = max(-clip, min(clip, dw)), max(-clip, min(clip, dh))
            gx, gy, gw, gh = px + pw * dx, py + ph * dy, pw * math.exp(dw), ph * math.exp(dh)
            bx1 = min(max(gx - gw / 2, 0), img_w)
            bx2 = min(max(gx + gw / 2, 0), img_w)
            by1 = min(max(gy - gh / 2, 0), img_h)
            by2 = min(max(gy + gh / 2, 0), img_h)
            boxes.append([bx1, by1, bx2, by2])
        boxes = torch.tensor(boxes)
        level_scores = scores[top]
        ok = ((boxes[:, 2] - boxes[:, 0]) > 0) & ((boxes[:, 3] - boxes[:, 1]) > 0)
        boxes, level_scores = boxes[ok], level_scores[ok]
        kept = nms(boxes, level_scores, iou_thr)  # per level: levels are the NMS groups
        all_boxes.append(boxes[kept])
        all_scores.append(level_scores[kept])
    boxes, scores = torch.cat(all_boxes), torch.cat(all_scores)
    order = scores.argsort(descending=True)[:max_per_img]
    return torch.cat([boxes[order], scores[order, None]], 1)


def _tiny_rpn(**kw):
    cfg = RPNConfig(in_channels=4, feat_channels=4, strides=(8, 16), **kw)
    torch.manual_seed(0)
    rpn = RPN(cfg)
    head = rpn.head
    # larger weights -> varied scores; a positive conv bias keeps ReLU outputs (and so scores) distinct
    for conv, std in ((head.rpn_conv, 0.5), (head.rpn_cls, 0.5), (head.rpn_reg, 0.1)):
        torch.nn.init.normal_(conv.weight, std=std)
        torch.nn.init.normal_(conv.bias, std=std)
    with torch.no_grad():
        head.rpn_conv.bias.add_(3.0)
    return rpn


def test_init_and_keys():
    head = RPNHead(RPNConfig())
    assert sorted(head.state_dict()) == sorted(
        f"rpn_{n}.{p}" for n in ("conv", "cls", "reg") for p in ("weight", "bias")
    )
    assert head.rpn_cls.weight.shape == (3, 256, 1, 1) and head.rpn_reg.weight.shape == (12, 256, 1, 1)
    assert head.rpn_conv.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert head.rpn_conv.bias.abs().sum().item() == 0.0


def test_test_proposals_match_plain_reference():
    rpn = _tiny_rpn(test_nms_pre=40, test_max_per_img=10, train_nms_pre=1000, train_max_per_img=1000)
    g = torch.Generator().manual_seed(1)
    feats = [torch.randn(2, 4, 6, 8, generator=g), torch.randn(2, 4, 3, 4, generator=g)]
    metas = [_meta(44, 60), _meta(30, 50)]
    props, losses = rpn(feats, metas)
    assert losses == {}
    for i, meta in enumerate(metas):
        ref = _reference_proposals(rpn, feats, i, meta.img_shape, 40, 10, 0.7)
        assert props[i].shape == ref.shape == (10, 5)  # top-k, NMS and the final cut all active
        torch.testing.assert_close(props[i], ref, atol=1e-4, rtol=1e-5)
        assert not props[i].requires_grad
    # training uses the train settings
    train_props, _ = rpn(feats, metas, training=True)
    ref = _reference_proposals(rpn, feats, 0, metas[0].img_shape, 1000, 1000, 0.7)
    assert train_props[0].shape[0] > 10
    torch.testing.assert_close(train_props[0], ref, atol=1e-4, rtol=1e-5)


def _one_level_rpn(**kw):
    """in/feat 1 channel, one 32x32 anchor per location at stride 16; hidden = relu(x)."""
    cfg = RPNConfig(in_channels=1, feat_channels=1, strides=(16,), scales=(2.0,), ratios=(1.0,), **kw)
    rpn = RPN(cfg)
    with torch.no_grad():
        rpn.head.rpn_conv.weight.zero_()
        rpn.head.rpn_conv.weight[0, 0, 1, 1] = 1.0
        rpn.head.rpn_cls.weight.fill_(1.0)
        rpn.head.rpn_reg.weight.copy_(torch.tensor([1.0, 2.0, -1.0, 0.5]).view(4, 1, 1, 1))
    return rpn


def _softplus(z):
    return math.log1p(math.exp(z))


X = torch.tensor([[0.5, -1.0], [2.0, 1.5]]).view(1, 1, 2, 2)  # hidden per anchor: 0.5, 0, 2, 1.5
GT = torch.tensor([[2.0, 0.0, 34.0, 32.0]])
# anchors: [-16,-16,16,16] IoU .123 (neg), [0,-16,32,16] IoU .306 (ignored),
#          [-16,0,16,32] IoU .28 (neg), [0,0,32,32] IoU .882 (pos); target (2/32, 0, 0, 0)


def _targets(boxes):
    return Targets(boxes, torch.zeros(boxes.shape[0], dtype=torch.long))


@pytest.mark.parametrize("kind", ["l1", "smooth_l1"])
def test_loss_hand_computed(kind):
    rpn = _one_level_rpn(loss_bbox=kind)
    _, losses = rpn([X], [_meta(32, 32)], [_targets(GT)], training=True)
    cls = (_softplus(-1.5) + _softplus(0.5) + _softplus(2.0)) / 3
    diffs = [abs(1.5 - 0.0625), 3.0, 1.5, 0.75]
    if kind == "l1":
        reg = sum(diffs) / 3
    else:
        reg = sum(d - 0.5 / 9 for d in diffs) / 3
    assert losses["loss_rpn_cls"].item() == pytest.approx(cls, rel=1e-5)
    assert losses["loss_rpn_bbox"].item() == pytest.approx(reg, rel=1e-5)


def test_loss_batch_normalisation_and_empty_gt():
    rpn = _one_level_rpn()
    feats = [torch.cat([X, X], 0)]
    empty = torch.zeros(0, 4)
    _, losses = rpn(feats, [_meta(32, 32), _meta(32, 32)], [_targets(GT), _targets(empty)], training=True)
    # image 2: 4 negatives, 0 positives counted as 1 -> avg_factor = (1 + 2) + (1 + 4) = 8
    cls = _softplus(-1.5) + _softplus(0.5) + _softplus(2.0)
    cls += _softplus(0.5) + _softplus(0.0) + _softplus(2.0) + _softplus(1.5)
    assert losses["loss_rpn_cls"].item() == pytest.approx(cls / 8, rel=1e-5)
    assert losses["loss_rpn_bbox"].item() == pytest.approx((1.4375 + 3.0 + 1.5 + 0.75) / 8, rel=1e-5)
    # no gt at all: zero bbox loss that still backpropagates
    _, losses = rpn([X], [_meta(32, 32)], [_targets(empty)], training=True)
    assert losses["loss_rpn_bbox"].item() == 0.0
    sum(losses.values()).backward()
    assert rpn.head.rpn_reg.weight.grad is not None


def test_loss_allowed_border_and_valid_flags():
    # allowed_border 0 with a 33x33 image: only the anchor [0,0,32,32] lies inside
    rpn = _one_level_rpn(allowed_border=0)
    _, losses = rpn([X], [_meta(33, 33)], [_targets(GT)], training=True)
    assert losses["loss_rpn_cls"].item() == pytest.approx(_softplus(-1.5) / 2, rel=1e-5)
    # 4x4 map (batch padded to 64) but the image pads to 32 (the meta's default): only the
    # top-left 2x2 anchors count
    rpn = _one_level_rpn()
    x = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4) / 10
    _, losses = rpn([x], [_meta(20, 20)], [_targets(torch.zeros(0, 4))], training=True)
    expected = sum(_softplus(v / 10) for v in (0, 1, 4, 5)) / (1 + 4)
    assert losses["loss_rpn_cls"].item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("size_divisor, valid", [(32, (0, 1, 4, 5)), (64, tuple(range(16)))])
def test_valid_flags_follow_the_collated_size_divisor(size_divisor, valid):
    """A 20x20 image collated with size_divisor 64 pads to 64x64, a 4x4 map at stride 16: the
    original's valid_flags on that pad_shape keep every location; with 32 only the top-left 2x2."""
    image = torch.zeros(3, 20, 20)
    batch = collate([(image, _meta(20, 20), _targets(torch.zeros(0, 4)))], size_divisor=size_divisor)
    assert batch.metas[0].pad_shape == (size_divisor, size_divisor)
    assert batch.metas[0].img_shape == (20, 20)
    rpn = _one_level_rpn()
    x = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4) / 10  # the map of a 64x64 batch
    logits, deltas = rpn.head([x])
    losses = rpn.loss(logits, deltas, batch.metas, batch.targets)
    expected = sum(_softplus(v / 10) for v in valid) / (1 + len(valid))  # all negatives, no gt
    assert losses["loss_rpn_cls"].item() == pytest.approx(expected, rel=1e-5)


def test_gradients_reach_all_rpn_params():
    rpn = _tiny_rpn()
    g = torch.Generator().manual_seed(2)
    feats = [torch.randn(1, 4, 6, 8, generator=g, requires_grad=True), torch.randn(1, 4, 3, 4, generator=g)]
    gt = _targets(torch.tensor([[0.0, 0.0, 56.0, 44.0], [16.0, 4.0, 60.0, 44.0]]))
    torch.manual_seed(0)
    props, losses = rpn(feats, [_meta(44, 60)], [gt], training=True)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_bbox"}
    (losses["loss_rpn_cls"] + losses["loss_rpn_bbox"]).backward()
    for name, p in rpn.head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert feats[0].grad is not None and not props[0].requires_grad


def test_training_is_reproducible_under_manual_seed():
    rpn = _tiny_rpn(num_samples=8)
    g = torch.Generator().manual_seed(3)
    feats = [torch.randn(1, 4, 6, 8, generator=g), torch.randn(1, 4, 3, 4, generator=g)]
    gt = [_targets(torch.tensor([[8.0, 8.0, 40.0, 30.0]]))]
    torch.manual_seed(7)
    a = rpn(feats, [_meta(44, 60)], gt, training=True)[1]
    torch.manual_seed(7)
    b = rpn(feats, [_meta(44, 60)], gt, training=True)[1]
    assert a["loss_rpn_cls"].item() == b["loss_rpn_cls"].item()


def test_autocast_bf16_cpu():
    rpn = _tiny_rpn()
    g = torch.Generator().manual_seed(4)
    feats = [torch.randn(1, 4, 6, 8, generator=g), torch.randn(1, 4, 3, 4, generator=g)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        props, _ = rpn(feats, [_meta(44, 60)])
    assert props[0].dtype == torch.float32 and props[0].shape[1] == 5 and props[0].shape[0] > 0


def test_bad_inputs():
    rpn = _tiny_rpn()
    one_level = rpn.head([torch.zeros(1, 4, 6, 8)])
    two_levels = rpn.head([torch.zeros(1, 4, 6, 8), torch.zeros(1, 4, 3, 4)])
    gt = [_targets(torch.zeros(0, 4))]
    with pytest.raises(ValueError, match="RPNProposals: got 1 levels"):
        rpn.proposals(*one_level, [_meta(40, 60)], training=False)
    with pytest.raises(ValueError, match="RPNLoss: got 1 levels"):
        rpn.loss(*one_level, [_meta(40, 60)], gt)
    with pytest.raises(ValueError, match="metas"):
        rpn.proposals(*two_levels, [_meta(40, 60), _meta(40, 60)], training=False)
    with pytest.raises(ValueError, match="targets"):
        rpn.loss(*two_levels, [_meta(40, 60)], gt * 2)
    with pytest.raises(ValueError, match="loss_bbox"):
        RPNLoss(RPNConfig(loss_bbox="l2"))
