"""BoxMasks: compact masks that paste exactly like pasting at once, and whose windows, RLEs and
areas agree with the pasted masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from gcnet import masks
from gcnet.evaluation.results import encode_masks
from gcnet.masks import BoxMasks, _sample_window, paste_masks

H, W = 40, 56


def _random_masks(seed: int, n: int = 12, m: int = 28, shape: tuple[int, int] = (H, W)) -> BoxMasks:
    """Random maps in random boxes, some partly off the image, plus edge cases: a box off the image,
    a zero-width box, a box covering the whole image and one touching the bottom-right corner."""
    g = torch.Generator().manual_seed(seed)
    height, width = shape
    probs = torch.rand(n + 4, m, m, generator=g)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([width, height]) - 5
    wh = torch.rand(n, 2, generator=g) * 30 + 0.5
    boxes = torch.cat([xy, xy + wh], dim=1)
    extra = torch.tensor(
        [
            [width + 5.0, 3.0, width + 9.0, 8.0],
            [10.0, 10.0, 10.0, 20.0],
            [-2.0, -3.0, width + 2.0, height + 1.0],
            [width - 6.3, height - 4.7, width + 0.0, height + 0.0],
        ]
    )
    return BoxMasks(probs, torch.cat([boxes, extra]), shape, 0.5)


def test_full_is_the_original_paste_in_both_modes() -> None:
    bm = _random_masks(0)
    full = bm.full()
    assert full.shape == bm.shape == (16, H, W) and full.dtype == torch.bool
    assert torch.equal(full, paste_masks(bm.probs, bm.boxes, (H, W), windowed=True))
    # The whole-image mode (the original's GPU path) differs for a zero-width box only: the
    # original maps its inf grid to the map's centre column in every image column, not just the window.
    fine = torch.ones(len(bm), dtype=torch.bool)
    fine[13] = False
    whole = paste_masks(bm.probs, bm.boxes, (H, W), windowed=False)
    chunked = paste_masks(bm.probs, bm.boxes, (H, W), windowed=False, chunk_bytes=H * W * 4 * 3)
    assert torch.equal(full[fine], whole[fine]) and torch.equal(whole, chunked)
    assert whole[13, :, :8].any() and not full[13, :, :8].any()
    assert full.any() and not full[12].any()  # the box off the image pastes nothing


def test_windows_sampled_in_bands_of_rows_give_the_same_bits(monkeypatch) -> None:
    bm = _random_masks(7)
    whole = bm.full()
    monkeypatch.setattr(masks, "WINDOW_BAND_PIXELS", 50)  # a few rows (or one) per band
    assert torch.equal(bm.full(), whole)
    assert torch.equal(bm.mask(14), whole[14])


def test_windows_masks_and_areas_agree_with_full() -> None:
    bm = _random_masks(1)
    full = bm.full()
    for i in range(len(bm)):
        x0, y0, win = bm.window(i)
        assert torch.equal(bm.mask(i), full[i])
        assert torch.equal(full[i, y0 : y0 + win.shape[0], x0 : x0 + win.shape[1]], win)
        assert int(win.sum()) == int(full[i].sum())  # nothing outside the window
    assert torch.equal(bm.area(), full.sum((1, 2)))
    assert bm.area().dtype == torch.int64


@pytest.mark.parametrize("shape", [(H, W), (1, 7), (9, 1)])
def test_rle_decodes_to_full_and_equals_encoding_it(shape: tuple[int, int]) -> None:
    bm = _random_masks(2, shape=shape)
    full = bm.full()
    rles = bm.rle()
    assert len(rles) == len(bm) and all(isinstance(r["counts"], str) for r in rles)
    decoded = mask_utils.decode([{"size": r["size"], "counts": r["counts"].encode()} for r in rles])
    assert np.array_equal(decoded.transpose(2, 0, 1).astype(bool), full.numpy())
    assert rles == encode_masks(full)  # the same canonical strings as encoding the pasted array


def test_rle_of_a_huge_image_never_pastes_it() -> None:
    # 40000 x 40000: three full masks would be 4.8 GB; the windows are a few hundred pixels
    bm = BoxMasks(
        torch.rand(3, 28, 28),
        torch.tensor([[100.0, 200, 130, 260], [0, 0, 9, 9], [39990, 39980, 40000, 40000]]),
        (40000, 40000),
    )
    rles = bm.rle()
    assert (
        mask_utils.area([{"size": r["size"], "counts": r["counts"].encode()} for r in rles]).tolist()
        == bm.area().tolist()
    )
    assert bm.area().min() > 0
    x0, y0, win = bm.window(0)
    rows, cols = win.nonzero(as_tuple=True)
    bbox = mask_utils.toBbox({"size": rles[0]["size"], "counts": rles[0]["counts"].encode()}).tolist()
    assert bbox == [
        x0 + int(cols.min()),
        y0 + int(rows.min()),
        int(cols.max() - cols.min()) + 1,
        int(rows.max() - rows.min()) + 1,
    ]


def test_subsets_follow_the_index() -> None:
    bm = _random_masks(3)
    full = bm.full()
    keep = bm.area() > 0
    assert torch.equal(bm[keep].full(), full[keep])
    assert torch.equal(bm[[4, 0, 4]].full(), full[[4, 0, 4]])
    assert torch.equal(bm[torch.tensor([2, 5])].full(), full[[2, 5]])
    assert torch.equal(bm[1:6:2].full(), full[1:6:2])
    assert torch.equal(bm[-1].full(), full[-1:]) and len(bm[3]) == 1
    assert len(bm[[]]) == 0 and bm[[]].shape == (0, H, W)
    with pytest.raises(IndexError):
        bm[len(bm)]


def test_hflip_mirrors_the_pasted_masks_up_to_ties_at_the_threshold() -> None:
    bm = _random_masks(4)
    want = bm.full().flip(-1)
    got = bm.hflip().full()
    # the flipped coordinates round differently in float32: only pixels sampling within 1e-5 of
    # the threshold may differ
    sampled = _sample_window(bm.probs[:, None], bm.boxes, 0, 0, W, H).flip(-1)
    near = (sampled - bm.threshold).abs() < 1e-5
    assert torch.equal(got[~near], want[~near])
    assert near.float().mean() < 1e-3 and want.any()


def test_shifted_pastes_as_the_original_at_an_offset() -> None:
    # boxes on a 1/8 px grid and inside the image: box + offset is exact in float32, so every bit agrees
    g = torch.Generator().manual_seed(5)
    xy = torch.randint(16, 200, (10, 2), generator=g) / 8
    wh = torch.randint(8, 160, (10, 2), generator=g) / 8
    boxes = torch.cat([xy, xy + wh], dim=1)
    bm = BoxMasks(torch.rand(10, 28, 28, generator=g), boxes, (H, W))
    assert (boxes[:, 2] < W - 2).all() and (boxes[:, 3] < H - 2).all()
    dx, dy = 37, 11
    moved = bm.shifted(dx, dy, (H + 50, W + 60))
    big = moved.full()
    assert moved.shape == (10, H + 50, W + 60)
    assert torch.equal(big[:, dy : dy + H, dx : dx + W], bm.full())
    assert int(big.sum()) == int(bm.full().sum()) > 0
    assert moved.rle() == encode_masks(big)


def test_cat_joins_parts_and_checks_them() -> None:
    bm = _random_masks(6)
    parts = [bm[:3], bm[3:3], bm[3:]]
    assert torch.equal(BoxMasks.cat(parts).full(), bm.full())
    with pytest.raises(ValueError, match="no parts"):
        BoxMasks.cat([])
    with pytest.raises(ValueError, match="differ"):
        BoxMasks.cat([bm, BoxMasks(bm.probs, bm.boxes, (H + 1, W))])
    with pytest.raises(ValueError, match="differ"):
        BoxMasks.cat([bm, BoxMasks(bm.probs[:, :14, :14], bm.boxes, (H, W))])


def test_bad_inputs_are_refused() -> None:
    # the same checks as paste_masks (tests/test_paste_masks.py), at construction
    with pytest.raises(ValueError, match="BoxMasks: boxes"):
        BoxMasks(torch.zeros(2, 28, 28), torch.zeros(3, 4), (5, 5))
    with pytest.raises(ValueError, match="image_shape"):
        BoxMasks(torch.zeros(1, 28, 28), torch.zeros(1, 4), (0, 5))
