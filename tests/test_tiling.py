"""Tiled prediction: the windows (SAHI's slicing) and the merge of their detections."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from gcnet.masks import BoxMasks
from gcnet.structures import Detections
from gcnet.tiling import drop_cut, merge_detections, merge_tiles, tile_windows


def _coverage(height: int, width: int, windows: list[tuple[int, int, int, int]]) -> Tensor:
    count = torch.zeros((height, width), dtype=torch.int32)
    for x0, y0, x1, y1 in windows:
        count[y0:y1, x0:x1] += 1
    return count


@pytest.mark.parametrize(
    ("height", "width", "size", "overlap"),
    [(1000, 700, 256, 0.2), (512, 2048, 512, 0.25), (333, 1001, 100, 0.5), (40, 1000, 64, 0.0), (97, 97, 10, 0.9)],
)
def test_windows_cover_every_pixel_with_the_stated_sizes_and_overlaps(
    height: int, width: int, size: int, overlap: float
) -> None:
    windows = tile_windows(height, width, size, overlap)
    assert (_coverage(height, width, windows) > 0).all()
    assert len(set(windows)) == len(windows)
    step = size - int(overlap * size)
    for axis, length in ((0, width), (1, height)):
        spans = sorted({(w[axis], w[axis + 2]) for w in windows})
        assert all(end - start == min(size, length) for start, end in spans)
        assert spans[0][0] == 0 and spans[-1][1] == length  # the last one ends at the image edge
        starts = [s for s, _ in spans]
        assert all(b - a == step for a, b in zip(starts[:-2], starts[1:-1]))  # overlap int(overlap * size)
        if len(starts) > 1:
            assert 0 < starts[-1] - starts[-2] <= step  # the last moved back: at least the stated overlap
    rows = sorted({(w[1], w[3]) for w in windows})
    columns = sorted({(w[0], w[2]) for w in windows})
    assert windows == [(x0, y0, x1, y1) for y0, y1 in rows for x0, x1 in columns]  # row by row


def test_windows_of_an_image_no_larger_than_a_tile_and_of_exact_multiples() -> None:
    assert tile_windows(300, 200, 512, 0.2) == [(0, 0, 200, 300)]
    assert tile_windows(512, 512, 512, 0.2) == [(0, 0, 512, 512)]
    assert tile_windows(100, 700, 512, 0.2) == [(0, 0, 512, 100), (188, 0, 700, 100)]
    grid = tile_windows(512, 1024, 256, 0.0)  # exact multiples without overlap: a disjoint grid
    assert grid == [(x, y, x + 256, y + 256) for y in (0, 256) for x in (0, 256, 512, 768)]
    assert (_coverage(512, 1024, grid) == 1).all()
    # with overlap 0.25 a 1024 px side is 0, 192, 384, 576 and the last moved back to 768
    assert sorted({w[0] for w in tile_windows(256, 1024, 256, 0.25)}) == [0, 192, 384, 576, 768]


@pytest.mark.parametrize(
    ("args", "problem"), [((0, 5, 4, 0.2), "image size"), ((5, 5, 0, 0.2), "size"), ((5, 5, 4, 1.0), "overlap")]
)
def test_windows_refuse_bad_arguments(args: tuple[int, int, int, float], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        tile_windows(*args)


def _solid_masks(boxes: Tensor, shape: tuple[int, int]) -> BoxMasks:
    return BoxMasks(torch.ones((len(boxes), 28, 28)), boxes, shape)


def _dets(boxes: list[list[float]], scores: list[float], labels: list[int], shape: tuple[int, int]) -> Detections:
    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return Detections(
        b, torch.tensor(scores), torch.tensor(labels, dtype=torch.int64), _solid_masks(b, shape), ("a", "b")
    )


def test_two_tiles_seeing_the_same_object_keep_one() -> None:
    # Windows (0, 0)-(64, 64) and (48, 0)-(112, 64) both see the object at x 50..60 of the image.
    left = _dets([[50, 10, 60, 20], [2, 2, 10, 10]], [0.9, 0.8], [0, 1], (64, 64))
    right = _dets([[2.5, 10, 12, 20.5], [30, 30, 40, 40]], [0.7, 0.6], [0, 0], (64, 64))
    merged = merge_tiles([left, right], [(0, 0), (48, 0)], (64, 112))
    assert merged.scores.tolist() == pytest.approx([0.9, 0.8, 0.6])  # the 0.7 copy suppressed
    assert merged.boxes.tolist() == [[50, 10, 60, 20], [2, 2, 10, 10], [78, 30, 88, 40]]
    assert merged.labels.tolist() == [0, 1, 0] and merged.class_names == ("a", "b")
    assert merged.masks is not None and merged.masks.image_shape == (64, 112)
    # a different class at the same place is kept unless the merge is class-agnostic
    other = _dets([[2, 10, 12, 20]], [0.7], [1], (64, 64))
    assert len(merge_tiles([left, other], [(0, 0), (48, 0)], (64, 112))) == 3
    assert len(merge_tiles([left, other], [(0, 0), (48, 0)], (64, 112), class_agnostic=True)) == 2
    assert merge_tiles([left, right], [(0, 0), (48, 0)], (64, 112), max_per_img=2).scores.tolist() == pytest.approx(
        [0.9, 0.8]
    )


def test_shifted_masks_land_at_the_right_pixels() -> None:
    tile = _dets([[2, 3, 6, 8]], [0.9], [0], (16, 16))
    merged = merge_tiles([tile], [(10, 20)], (40, 50))
    assert merged.masks is not None
    expected = torch.zeros((1, 40, 50), dtype=torch.bool)
    expected[0, 23:28, 12:16] = True  # box (12, 23, 16, 28) of the image
    assert torch.equal(merged.masks.full(), expected)
    assert merged.boxes.tolist() == [[12, 23, 16, 28]]


def test_merge_needs_parts_alike() -> None:
    with pytest.raises(ValueError, match="no detections"):
        merge_detections([])
    boxes_only = Detections(torch.zeros((0, 4)), torch.zeros(0), torch.zeros(0, dtype=torch.int64))
    with pytest.raises(ValueError, match="masks"):
        merge_detections([boxes_only, _dets([[0, 0, 1, 1]], [0.5], [0], (4, 4))])
    with pytest.raises(ValueError, match="offsets"):
        merge_tiles([boxes_only], [], (4, 4))
    assert len(merge_detections([boxes_only, boxes_only])) == 0


# --- end to end with a stand-in detector ---------------------------------------------------------
# A real detector resizes its input to its test scale; objects a few pixels wide at that scale are
# lost. The stand-in does the same with nothing learned: it shrinks the image to fit SCALE px
# (area average), keeps pixels above 0.5 and returns one box per 4-connected group of them, mapped
# back to input pixels. What this proves: the windows, the offsets and the merge find every small
# object once, in the right place, where the full-image pass at the same scale finds none. It says
# nothing about how much a trained network gains (that depends on the data).
SCALE = 64


def _blobs(hot: Tensor) -> list[list[tuple[int, int]]]:
    left = {(int(y), int(x)) for y, x in hot.nonzero().tolist()}
    groups = []
    while left:
        stack, group = [left.pop()], []
        while stack:
            y, x = stack.pop()
            group.append((y, x))
            for n in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if n in left:
                    left.remove(n)
                    stack.append(n)
        groups.append(group)
    return groups


def _stand_in_detector(image: Tensor) -> Detections:
    h, w = image.shape
    factor = max(h, w) / SCALE
    small = F.interpolate(image[None, None], size=(round(h / factor), round(w / factor)), mode="area")[0, 0]
    boxes, scores = [], []
    for group in _blobs(small > 0.5):
        ys, xs = zip(*group)
        boxes.append([min(xs) * factor, min(ys) * factor, (max(xs) + 1) * factor, (max(ys) + 1) * factor])
        scores.append(float(torch.stack([small[y, x] for y, x in group]).mean()))
    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    labels = torch.zeros(len(boxes), dtype=torch.int64)
    return Detections(b, torch.tensor(scores).reshape(-1), labels, _solid_masks(b, (h, w)))


def test_tiles_find_small_objects_the_full_image_pass_misses() -> None:
    height = width = 1024
    size, overlap = 128, 0.25
    windows = tile_windows(height, width, size, overlap)
    corners = [(100, 100), (40, 40), (500, 300), (1000, 1000), (200, 612)]  # (x, y) of 8 px squares
    image = torch.zeros((height, width))
    for x, y in corners:
        image[y : y + 8, x : x + 8] = 1.0
    # each object lies wholly inside every window it touches (one cut by a window edge would give a
    # partial box beside the whole one: NMS with IoU cannot merge those, SAHI's IOS matching can)
    for (x, y), (x0, y0, x1, y1) in itertools.product(corners, windows):
        inside_x, inside_y = x0 <= x and x + 8 <= x1, y0 <= y and y + 8 <= y1
        assert (inside_x or x + 8 <= x0 or x >= x1) and (inside_y or y + 8 <= y0 or y >= y1)

    full = _stand_in_detector(image)
    assert len(full) == 0  # 8 px at a 1/16 scale: half a pixel at most, below the threshold

    parts = [full] + [_stand_in_detector(image[y0:y1, x0:x1]) for x0, y0, x1, y1 in windows]
    offsets = [(0, 0)] + [(x0, y0) for x0, y0, _, _ in windows]
    assert sum(len(p) for p in parts) > len(corners)  # objects in the overlaps are seen several times
    merged = merge_tiles(parts, offsets, (height, width))
    expected = sorted([float(x), float(y), x + 8.0, y + 8.0] for x, y in corners)
    assert sorted(merged.boxes.tolist()) == expected
    assert merged.masks is not None
    assert torch.equal(merged.masks.full().any(0), image > 0)


def test_drop_cut_removes_what_touches_an_inner_window_edge_only() -> None:
    # window (100, 0)-(164, 64) of a 64 x 300 image: its left and right edges are inside the image,
    # its top and bottom edges are the image's
    window = (100, 0, 164, 64)
    det = _dets(
        [[0.5, 10, 9, 20], [30, 0, 40, 10], [55, 30, 63.5, 40], [20, 54, 30, 64], [20, 20, 30, 30]],
        [0.9, 0.8, 0.7, 0.6, 0.5],
        [0, 0, 1, 1, 0],
        (64, 64),
    )
    kept = drop_cut(det, window, (64, 300))
    assert kept.boxes.tolist() == [[30, 0, 40, 10], [20, 54, 30, 64], [20, 20, 30, 30]]
    assert kept.masks is not None and len(kept.masks) == 3
    # the first window of the row has the image's left edge: a box there stays
    assert len(drop_cut(det, (0, 0, 64, 64), (64, 300))) == 4
    assert len(drop_cut(det, (0, 0, 64, 64), (64, 64))) == 5  # a window that is the whole image
    assert len(drop_cut(det, window, (64, 300), margin=0.4)) == 5  # 0.5 and 63.5 px: farther than 0.4 px


def test_objects_cut_by_window_edges_are_found_once_whole() -> None:
    """8 px squares across inner window edges: each window that cuts one sees a part of it, which
    IoU-NMS leaves beside the whole box; dropped first, every object is found once and whole."""
    height = width = 512
    size, overlap = 128, 0.25  # windows start every 96 px: edges at 96, 128, 192, 224, ...
    windows = tile_windows(height, width, size, overlap)
    corners = [(124, 50), (50, 220), (188, 300), (220, 220), (316, 400)]  # each crosses an edge
    image = torch.zeros((height, width))
    for x, y in corners:
        image[y : y + 8, x : x + 8] = 1.0
    parts = [_stand_in_detector(image)] + [_stand_in_detector(image[y0:y1, x0:x1]) for x0, y0, x1, y1 in windows]
    offsets = [(0, 0)] + [(x0, y0) for x0, y0, _, _ in windows]
    expected = sorted([float(x), float(y), x + 8.0, y + 8.0] for x, y in corners)

    kept_all = merge_tiles(parts, offsets, (height, width))
    assert len(kept_all) > len(corners)  # the cut parts survive IoU-NMS
    dropped = parts[:1] + [drop_cut(p, w, (height, width)) for p, w in zip(parts[1:], windows)]
    assert sorted(merge_tiles(dropped, offsets, (height, width)).boxes.tolist()) == expected
