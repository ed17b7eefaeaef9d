"""batched_nms against a plain per-class loop of torchvision NMS."""

import pytest
import torch
from torchvision.ops import nms

from gcnet.boxes import batched_nms, box_iou


def _random_boxes(n, seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 60
    wh = 5 + torch.rand(n, 2, generator=g) * 30
    return torch.cat([xy, xy + wh], 1), torch.rand(n, generator=g), torch.randint(0, 4, (n,), generator=g)


def _loop_reference(boxes, scores, idxs, thr):
    kept = []
    for c in idxs.unique().tolist():
        members = (idxs == c).nonzero().view(-1)
        kept.append(members[nms(boxes[members], scores[members], thr)])
    kept = torch.cat(kept)
    return kept[scores[kept].argsort(descending=True)]


@pytest.mark.parametrize("split_thr", [10000, 1])
def test_equals_per_class_loop(split_thr):
    boxes, scores, idxs = _random_boxes(300, 0)
    keep = batched_nms(boxes, scores, idxs, 0.5, split_thr=split_thr)
    ref = _loop_reference(boxes, scores, idxs, 0.5)
    assert keep.dtype == torch.int64
    assert torch.equal(keep, ref)
    assert (scores[keep][:-1] >= scores[keep][1:]).all()


def test_suppresses_within_but_not_across_classes():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10.5], [0, 0, 10, 10], [50, 50, 60, 60]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    idxs = torch.tensor([0, 0, 1, 0])
    assert batched_nms(boxes, scores, idxs, 0.5).tolist() == [0, 2, 3]
    assert batched_nms(boxes, scores, torch.zeros(4, dtype=torch.long), 0.5).tolist() == [0, 3]
    # IoU exactly 0.5 is kept (suppression is strictly greater than the threshold)
    half = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 5]])
    assert batched_nms(half, torch.tensor([0.9, 0.8]), torch.zeros(2, dtype=torch.long), 0.5).tolist() == [0, 1]


def test_empty_and_errors():
    keep = batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5)
    assert keep.shape == (0,) and keep.dtype == torch.int64
    with pytest.raises(ValueError, match="scores"):
        batched_nms(torch.zeros(3, 4), torch.zeros(2), torch.zeros(3, dtype=torch.long), 0.5)


def test_half_precision_input():
    boxes, scores, idxs = _random_boxes(100, 3)
    keep = batched_nms(boxes.half(), scores.half(), idxs, 0.5)
    assert torch.equal(keep, _loop_reference(boxes.half().float(), scores.half().float(), idxs, 0.5))


def test_box_iou_has_no_plus_one():
    iou = box_iou(torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([[5.0, 0, 15, 10]]))
    assert iou.item() == pytest.approx(50 / 150)
