"""Random positive/negative sampling (mmdet ``RandomSampler``).

Returned indices are sorted ascending (the original applies ``unique`` to each set).
Adding the gt boxes as proposals is the caller's job: the RoI head adds them after assigning,
as extra positives (``gcnet.models.roi.targets.sample_rois``), as the original does.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gcnet.boxes.assigner import AssignResult


def _random_choice(gallery: Tensor, num: int, generator: torch.Generator | None) -> Tensor:
    if generator is None:
        perm = torch.randperm(gallery.numel(), device=gallery.device)[:num]
    else:
        perm = torch.randperm(gallery.numel(), generator=generator, device=generator.device)[:num]
        perm = perm.to(gallery.device)
    return gallery[perm]


class RandomSampler:
    def __init__(self, num: int, pos_fraction: float, neg_pos_ub: int = -1, add_gt_as_proposals: bool = False) -> None:
        if num <= 0 or not 0.0 <= pos_fraction <= 1.0:
            raise ValueError(f"RandomSampler: need num > 0 and 0 <= pos_fraction <= 1, got {num}, {pos_fraction}")
        self.num = int(num)
        self.pos_fraction = float(pos_fraction)
        self.neg_pos_ub = neg_pos_ub
        # Kept for config parity; the RoI head adds the gts (after assigning) itself.
        self.add_gt_as_proposals = add_gt_as_proposals

    def sample(self, assign_result: AssignResult, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(pos_inds, neg_inds): up to int(num * pos_fraction) positives, negatives fill to num."""
        gt_inds = assign_result.gt_inds
        num_expected_pos = int(self.num * self.pos_fraction)
        pos = (gt_inds > 0).nonzero().view(-1)
        if pos.numel() > num_expected_pos:
            pos = _random_choice(pos, num_expected_pos, generator)
        pos = pos.unique()
        num_expected_neg = self.num - pos.numel()
        if self.neg_pos_ub >= 0:
            upper = int(self.neg_pos_ub * max(1, pos.numel()))
            num_expected_neg = min(num_expected_neg, upper)
        neg = (gt_inds == 0).nonzero().view(-1)
        if neg.numel() > num_expected_neg:
            neg = _random_choice(neg, num_expected_neg, generator)
        return pos, neg.unique()
