"""Mask pasting against a per-pixel bilinear computation; windowed == chunked == one-shot."""

from __future__ import annotations

import math

import pytest
import torch

from gcnet.models.postprocess import paste_masks, rescale_boxes


def _hand_paste(prob: torch.Tensor, box: list[float], height: int, width: int) -> torch.Tensor:
    """Sample the m x m map at each pixel centre: source = (p + 0.5 - x1) / w * m - 0.5, zero outside."""
    m = prob.shape[0]
    x1, y1, x2, y2 = box

    def cell(i: int, j: int) -> float:
        return prob[i, j].item() if 0 <= i < m and 0 <= j < m else 0.0

    out = torch.zeros(height, width, dtype=torch.float64)
    for py in range(height):
        v = (py + 0.5 - y1) / (y2 - y1) * m - 0.5
        for px in range(width):
            u = (px + 0.5 - x1) / (x2 - x1) * m - 0.5
            i0, j0 = math.floor(v), math.floor(u)
            a, b = v - i0, u - j0
            out[py, px] = (
                cell(i0, j0) * (1 - a) * (1 - b)
                + cell(i0, j0 + 1) * (1 - a) * b
                + cell(i0 + 1, j0) * a * (1 - b)
                + cell(i0 + 1, j0 + 1) * a * b
            )
    return out


def test_paste_matches_hand_bilinear() -> None:
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(3, 6, 6, generator=g)
    boxes = [[2.3, 1.7, 11.2, 9.9], [-3.0, 4.0, 6.5, 20.0], [10.0, 10.0, 13.0, 11.5]]
    height, width = 14, 16
    for windowed in (True, False):
        got = paste_masks(probs, torch.tensor(boxes), (height, width), 0.5, windowed=windowed)
        assert got.shape == (3, height, width) and got.dtype == torch.bool
        for k, box in enumerate(boxes):
            want = _hand_paste(probs[k], box, height, width)
            clear = (want - 0.5).abs() > 1e-5  # ignore float ties at the threshold
            assert torch.equal(got[k][clear], (want >= 0.5)[clear])
            assert clear.float().mean() > 0.95


def test_threshold_is_inclusive() -> None:
    # Box == image with m == image size: every pixel centre lands exactly on one cell.
    probs = torch.tensor([[[0.5, 0.4999], [0.7, 0.0]]])
    got = paste_masks(probs, torch.tensor([[0.0, 0.0, 2.0, 2.0]]), (2, 2))
    assert got[0].tolist() == [[True, False], [True, False]]
    got_hi = paste_masks(probs, torch.tensor([[0.0, 0.0, 2.0, 2.0]]), (2, 2), threshold=0.6)
    assert got_hi[0].tolist() == [[False, False], [True, False]]


def test_windowed_chunked_and_whole_agree() -> None:
    g = torch.Generator().manual_seed(1)
    n, height, width = 12, 40, 56
    probs = torch.rand(n, 28, 28, generator=g)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([width, height]) - 5
    wh = torch.rand(n, 2, generator=g) * 30 + 0.5
    boxes = torch.cat([xy, xy + wh], dim=1)
    windowed = paste_masks(probs, boxes, (height, width), windowed=True)
    whole = paste_masks(probs, boxes, (height, width), windowed=False)
    chunked = paste_masks(probs, boxes, (height, width), windowed=False, chunk_bytes=height * width * 4 * 5)
    assert torch.equal(windowed, whole)
    assert torch.equal(chunked, whole)
    assert whole.any()


def test_empty_and_degenerate_inputs() -> None:
    out = paste_masks(torch.zeros(0, 28, 28), torch.zeros(0, 4), (5, 7))
    assert out.shape == (0, 5, 7) and out.dtype == torch.bool
    # a box entirely outside the image pastes nothing, in both modes
    far = paste_masks(torch.ones(1, 4, 4), torch.tensor([[50.0, 50.0, 60.0, 60.0]]), (5, 7))
    assert not far.any()
    assert not paste_masks(torch.ones(1, 4, 4), torch.tensor([[50.0, 50, 60, 60]]), (5, 7), windowed=False).any()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="mask_probs"):
        paste_masks(torch.zeros(2, 28, 14), torch.zeros(2, 4), (5, 5))
    with pytest.raises(ValueError, match="boxes"):
        paste_masks(torch.zeros(2, 28, 28), torch.zeros(3, 4), (5, 5))
    with pytest.raises(ValueError, match="threshold"):
        paste_masks(torch.zeros(1, 28, 28), torch.zeros(1, 4), (5, 5), threshold=0.0)


def test_rescale_boxes_divides_by_scale_factor() -> None:
    boxes = torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    assert rescale_boxes(boxes, (2.0, 0.5)).tolist() == [[5.0, 40.0, 15.0, 80.0]]
