"""MaxIoUAssigner on hand-made boxes, RandomSampler counts/reproducibility, L1 / SmoothL1 losses."""

import pytest
import torch

from gcnet.boxes import AssignResult, MaxIoUAssigner, RandomSampler, l1_loss, smooth_l1_loss

GT = torch.tensor([[0.0, 0, 10, 10]])


def test_assign_neg_pos_ignored():
    boxes = torch.tensor(
        [
            [0.0, 0, 10, 10],  # IoU 1 -> positive
            [0, 0, 10, 5],  # IoU 0.5 -> ignored (between 0.3 and 0.7)
            [20, 20, 30, 30],  # IoU 0 -> negative
            [0, 0, 10, 2.5],  # IoU 0.25 -> negative
            [0, 0, 10, 7],  # IoU 0.7 -> positive (>=)
            [0, 0, 10, 3],  # IoU 0.3 -> ignored (negatives are < neg_iou)
        ]
    )
    res = MaxIoUAssigner(0.7, 0.3, 0.3).assign(boxes, GT, torch.tensor([5]))
    assert res.gt_inds.tolist() == [1, -1, 0, 0, 1, -1]
    assert res.labels.tolist() == [5, -1, -1, -1, 5, -1]
    torch.testing.assert_close(res.max_overlaps, torch.tensor([1.0, 0.5, 0.0, 0.25, 0.7, 0.3]))
    assert res.num_gts == 1


def test_low_quality_match_with_ties():
    boxes = torch.tensor([[0.0, 0, 10, 5], [0, 5, 10, 10], [0, 0, 10, 4], [40, 40, 50, 50]])
    # best IoU of the gt is 0.5, reached by boxes 0 and 1 (a tie): both become positive
    res = MaxIoUAssigner(0.7, 0.3, 0.3).assign(boxes, GT)
    assert res.gt_inds.tolist() == [1, 1, -1, 0]
    res = MaxIoUAssigner(0.7, 0.3, 0.3, gt_max_assign_all=False).assign(boxes, GT)
    assert res.gt_inds.tolist() == [1, -1, -1, 0]
    res = MaxIoUAssigner(0.7, 0.3, 0.3, match_low_quality=False).assign(boxes, GT)
    assert res.gt_inds.tolist() == [-1, -1, -1, 0]
    # a best IoU below min_pos_iou gives no low-quality match
    res = MaxIoUAssigner(0.7, 0.3, 0.6).assign(boxes, GT)
    assert res.gt_inds.tolist() == [-1, -1, -1, 0]


def test_low_quality_later_gt_wins():
    # box 0 is the best box of both gts (IoU 0.5 each); the original loops gts in order -> gt 2 wins
    gts = torch.tensor([[0.0, 0, 10, 10], [0, 5, 10, 15]])
    boxes = torch.tensor([[0.0, 5, 10, 10], [100, 100, 110, 110]])
    res = MaxIoUAssigner(0.7, 0.3, 0.3).assign(boxes, gts, torch.tensor([3, 7]))
    assert res.gt_inds.tolist() == [2, 0]
    assert res.labels.tolist() == [7, -1]


def test_positive_takes_argmax_gt():
    gts = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 9]])
    res = MaxIoUAssigner(0.7, 0.3, 0.3, match_low_quality=False).assign(torch.tensor([[0.0, 0, 10, 8.9]]), gts)
    assert res.gt_inds.tolist() == [2]


def test_no_gts_all_negative():
    boxes = torch.rand(5, 4) + torch.tensor([0, 0, 1, 1])
    res = MaxIoUAssigner(0.7, 0.3, 0.3).assign(boxes, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert res.gt_inds.tolist() == [0] * 5 and res.labels.tolist() == [-1] * 5
    assert res.max_overlaps.tolist() == [0.0] * 5


def test_assigner_errors():
    with pytest.raises(ValueError, match="gt_boxes must be"):
        MaxIoUAssigner(0.7, 0.3, 0.3).assign(torch.zeros(2, 4), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="neg_iou"):
        MaxIoUAssigner(0.3, 0.7, 0.3)


def _assign(num_pos, num_neg, num_ign=0):
    gt_inds = torch.cat([torch.full((num_pos,), 2), torch.zeros(num_neg, dtype=torch.long), torch.full((num_ign,), -1)])
    perm = torch.randperm(gt_inds.numel(), generator=torch.Generator().manual_seed(5))
    return AssignResult(gt_inds[perm], torch.zeros(gt_inds.numel()), 3)


def test_sampler_counts_and_membership():
    res = _assign(300, 1000, 50)
    pos, neg = RandomSampler(256, 0.5).sample(res)
    assert pos.numel() == 128 and neg.numel() == 128
    assert (res.gt_inds[pos] > 0).all() and (res.gt_inds[neg] == 0).all()
    assert pos.unique().numel() == 128 and torch.equal(pos, pos.sort().values)
    # few positives: negatives fill the rest
    pos, neg = RandomSampler(256, 0.5).sample(_assign(10, 1000))
    assert pos.numel() == 10 and neg.numel() == 246
    # few of both: take everything available
    pos, neg = RandomSampler(256, 0.5).sample(_assign(3, 7, 5))
    assert pos.numel() == 3 and neg.numel() == 7
    # neg_pos_ub bounds the negatives
    pos, neg = RandomSampler(256, 0.5, neg_pos_ub=3).sample(_assign(10, 1000))
    assert neg.numel() == 30


def test_sampler_reproducible_under_manual_seed():
    res = _assign(300, 1000)
    sampler = RandomSampler(256, 0.5)
    torch.manual_seed(123)
    a = sampler.sample(res)
    torch.manual_seed(123)
    b = sampler.sample(res)
    c = sampler.sample(res)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(sampler.sample(res, g1)[1], sampler.sample(res, g2)[1])


def test_l1_and_smooth_l1_hand_values():
    pred = torch.tensor([[0.0, 1.0], [2.0, -0.05]])
    target = torch.tensor([[0.5, 1.0], [0.0, 0.0]])
    # |d| = 0.5, 0, 2, 0.05
    assert l1_loss(pred, target).item() == pytest.approx(2.55 / 4)
    assert l1_loss(pred, target, avg_factor=2.0).item() == pytest.approx(2.55 / 2)
    w = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    assert l1_loss(pred, target, weight=w, avg_factor=5.0).item() == pytest.approx(0.55 / 5)
    beta = 0.1  # 0.5 -> 0.45, 0 -> 0, 2 -> 1.95, 0.05 -> 0.5*0.0025/0.1 = 0.0125
    assert smooth_l1_loss(pred, target, beta, avg_factor=1.0).item() == pytest.approx(0.45 + 1.95 + 0.0125)
    empty = torch.zeros(0, 4, requires_grad=True)
    loss = l1_loss(empty, torch.zeros(0, 4), avg_factor=3.0)
    assert loss.item() == 0.0 and loss.requires_grad
