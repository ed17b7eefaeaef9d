"""Multi-level RoIAlign: level mapping, aligned sampling, routing, empty input, mixed dtypes."""

from __future__ import annotations

import math

import pytest
import torch

from gcnet.models.roi.extractor import RoIExtractor, boxes_to_rois, map_roi_levels


def _square_rois(sides: list[float]) -> torch.Tensor:
    return torch.tensor([[0.0, 0.0, 0.0, s, s] for s in sides])


def test_level_mapping_boundaries() -> None:
    # finest_scale 56: < 112 px -> 0, [112, 224) -> 1, [224, 448) -> 2, >= 448 -> 3.
    sides = [4.0, 111.9, 112.0, 223.9, 224.0, 447.9, 448.0, 2000.0]
    expected = [0, 0, 1, 1, 2, 2, 3, 3]
    assert map_roi_levels(_square_rois(sides), 4).tolist() == expected


def test_level_mapping_uses_sqrt_area_and_clamps() -> None:
    # 56 x 224 has sqrt area 112 -> level 1 (a long thin box goes by area, not by its long side).
    rois = torch.tensor([[0, 0, 0, 224.0, 56.0], [0, 5, 5, 5, 5], [0, 0, 0, 1e5, 1e5]])
    assert map_roi_levels(rois, 4).tolist() == [1, 0, 3]


def _hand_roi_align(feat: torch.Tensor, box: list[float], scale: float, out: int) -> torch.Tensor:
    """Aligned RoIAlign written from the spec: shift -0.5, adaptive grid, bilinear, average."""
    h, w = feat.shape
    x1, y1, x2, y2 = (c * scale - 0.5 for c in box)
    bin_w, bin_h = (x2 - x1) / out, (y2 - y1) / out
    gw, gh = math.ceil((x2 - x1) / out), math.ceil((y2 - y1) / out)

    def bilinear(y: float, x: float) -> float:
        if y < -1.0 or y > h or x < -1.0 or x > w:
            return 0.0
        y, x = max(y, 0.0), max(x, 0.0)
        y0, x0 = int(y), int(x)
        if y0 >= h - 1:
            y0 = y1_ = h - 1
            y = float(y0)
        else:
            y1_ = y0 + 1
        if x0 >= w - 1:
            x0 = x1_ = w - 1
            x = float(x0)
        else:
            x1_ = x0 + 1
        ly, lx = y - y0, x - x0
        return (
            feat[y0, x0] * (1 - ly) * (1 - lx)
            + feat[y0, x1_] * (1 - ly) * lx
            + feat[y1_, x0] * ly * (1 - lx)
            + feat[y1_, x1_] * ly * lx
        ).item()

    res = torch.zeros(out, out, dtype=torch.float64)
    for i in range(out):
        for j in range(out):
            acc = 0.0
            for iy in range(gh):
                for ix in range(gw):
                    y = y1 + i * bin_h + (iy + 0.5) * bin_h / gh
                    x = x1 + j * bin_w + (ix + 0.5) * bin_w / gw
                    acc += bilinear(y, x)
            res[i, j] = acc / (gh * gw)
    return res


def test_aligned_roi_align_matches_hand_bilinear() -> None:
    g = torch.Generator().manual_seed(0)
    feat = torch.rand(1, 1, 9, 11, generator=g, dtype=torch.float64)
    ext = RoIExtractor(featmap_strides=(4, 8, 16, 32), output_size=3)
    feats = [feat.float()] + [torch.zeros(1, 1, 2, 2)] * 3
    # Boxes at stride 4 (small, level 0); the last one pokes out of the map.
    boxes = [[3.0, 5.0, 29.0, 17.0], [0.0, 0.0, 7.0, 9.0], [30.0, 20.0, 50.0, 44.0]]
    rois = torch.tensor([[0.0] + b for b in boxes])
    got = ext(feats, rois)
    for k, b in enumerate(boxes):
        want = _hand_roi_align(feat[0, 0], b, 0.25, 3)
        torch.testing.assert_close(got[k, 0].double(), want, atol=1e-5, rtol=0)


def test_linear_map_gives_bin_centres_with_half_pixel_shift() -> None:
    # On f(y, x) = 3y + x bilinear sampling is exact, so each bin averages to its centre value.
    feat = (3 * torch.arange(16.0)[:, None] + torch.arange(16.0)[None, :])[None, None]
    ext = RoIExtractor(featmap_strides=(1, 2, 4, 8), output_size=2)
    feats = [feat] + [torch.zeros(1, 1, 2, 2)] * 3
    box = [2.0, 4.0, 10.0, 8.0]
    got = ext(feats, torch.tensor([[0.0] + box]))[0, 0]
    for i in range(2):
        for j in range(2):
            cy = box[1] - 0.5 + (i + 0.5) * (box[3] - box[1]) / 2
            cx = box[0] - 0.5 + (j + 0.5) * (box[2] - box[0]) / 2
            assert got[i, j].item() == pytest.approx(3 * cy + cx, abs=1e-4)


def test_rois_are_routed_to_their_level_and_batch_image() -> None:
    # Level l of image b is filled with the constant 10 * b + l, so each output names its source.
    feats = [
        torch.stack([torch.full((1, 640 // s, 640 // s), 10.0 * b + lvl) for b in range(2)])
        for lvl, s in enumerate((4, 8, 16, 32))
    ]
    feats.append(torch.full((2, 1, 10, 10), 99.0))  # a 5th (P6) level must be ignored
    rois = torch.tensor(
        [[0, 0, 0, 20, 20], [1, 0, 0, 120, 120], [0, 0, 0, 300, 300], [1, 0, 0, 600, 600], [1, 2, 2, 8, 8]],
        dtype=torch.float32,
    )
    out = RoIExtractor(output_size=7)(feats, rois)
    centre = out[:, 0, 3, 3].tolist()
    assert centre == [0.0, 11.0, 2.0, 13.0, 10.0]


def test_zero_rois_and_empty_images() -> None:
    feats = [torch.rand(1, 3, 8, 8) for _ in range(4)]
    out = RoIExtractor(output_size=7)(feats, torch.zeros(0, 5))
    assert out.shape == (0, 3, 7, 7)
    rois = boxes_to_rois([torch.zeros(0, 4), torch.tensor([[1.0, 2, 3, 4, 0.9]])])
    assert rois.tolist() == [[1.0, 1.0, 2.0, 3.0, 4.0]]


def test_low_precision_features_with_float_rois() -> None:
    g = torch.Generator().manual_seed(1)
    feats32 = [torch.rand(1, 2, 16 // (2**i), 16 // (2**i), generator=g) for i in range(4)]
    rois = torch.tensor([[0, 1.3, 2.1, 9.7, 12.2]])
    ref = RoIExtractor(output_size=7)(feats32, rois)
    out = RoIExtractor(output_size=7)([f.bfloat16() for f in feats32], rois)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_ac = RoIExtractor(output_size=7)([f.bfloat16() for f in feats32], rois)
    torch.testing.assert_close(out_ac.float(), ref, atol=2e-2, rtol=2e-2)


def test_bad_input_errors() -> None:
    ext = RoIExtractor()
    with pytest.raises(ValueError, match="feature levels"):
        ext([torch.zeros(1, 1, 4, 4)] * 3, torch.zeros(0, 5))
    with pytest.raises(ValueError, match="rois must be"):
        ext([torch.zeros(1, 1, 4, 4)] * 4, torch.zeros(2, 4))
