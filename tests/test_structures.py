"""ImageMeta.pad_shape: the image's own padded extent (what the RPN's valid anchors follow);
Detections: subsets, filters, arrays, COCO records and drawings."""

import dataclasses
import tracemalloc

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from gcnet.data.collate import collate
from gcnet.masks import BoxMasks
from gcnet.models.config import COCO_CLASSES
from gcnet.structures import DEFAULT_SIZE_DIVISOR, Detections, ImageMeta
from gcnet.visualise import class_colour


def test_pad_shape_defaults_to_img_shape_rounded_up_to_32():
    assert DEFAULT_SIZE_DIVISOR == 32
    assert ImageMeta((20, 33), (40, 66), (0.5, 0.5)).pad_shape == (32, 64)
    assert ImageMeta((64, 96), (64, 96), (1.0, 1.0)).pad_shape == (64, 96)
    assert ImageMeta((20, 33), (20, 33), (1.0, 1.0), pad_shape=(20, 40)).pad_shape == (20, 40)
    with pytest.raises(ValueError, match="pad_shape"):
        ImageMeta((20, 33), (20, 33), (1.0, 1.0), pad_shape=(16, 40))


def test_collate_sets_each_image_own_pad_shape():
    metas = [ImageMeta((20, 70), (20, 70), (1.0, 1.0)), ImageMeta((65, 30), (65, 30), (1.0, 1.0))]
    samples = [(torch.zeros(3, *m.img_shape), m, None) for m in metas]
    batch = collate(samples, size_divisor=64)
    assert batch.images.shape[-2:] == (128, 128)  # the batch pads to its largest image
    assert [m.pad_shape for m in batch.metas] == [(64, 128), (128, 64)]  # each image to its own
    assert [dataclasses.replace(m, pad_shape=None) for m in batch.metas] == metas  # all else kept
    assert [m.pad_shape for m in collate(samples, size_divisor=0).metas] == [(20, 70), (65, 30)]


# --- Detections: the result object -------------------------------------------------------------

H, W = 48, 64
BOXES = [[4.0, 6.0, 20.0, 30.0], [30.0, 2.0, 60.0, 22.0], [24.0, 30.0, 50.0, 46.0], [0.0, 0.0, 8.0, 8.0]]


def _detections(**kw) -> Detections:
    """Four detections with masks: maps of 0.9 (solid inside the box) in boxes that do not overlap."""
    boxes = torch.tensor(BOXES)
    masks = BoxMasks(torch.full((4, 7, 7), 0.9), boxes, (H, W))
    return Detections(
        boxes, torch.tensor([0.9, 0.2, 0.6, 0.4]), torch.tensor([1, 0, 2, 1]), masks, ("a", "b", "c"), **kw
    )


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def test_subsets_and_filter_keep_masks_in_step() -> None:
    det = _detections()
    full = det.masks.full()
    sub = det[torch.tensor([2, 0])]
    assert sub.scores.tolist() == pytest.approx([0.6, 0.9]) and torch.equal(sub.masks.full(), full[[2, 0]])
    assert sub.class_names == det.class_names and len(det[1]) == 1 and len(det[1:3]) == 2
    kept = det.filter(score_thr=0.4)
    assert kept.labels.tolist() == [1, 2, 1] and torch.equal(kept.masks.full(), full[[0, 2, 3]])  # >= is kept
    assert det.filter(labels=[1]).scores.tolist() == pytest.approx([0.9, 0.4])
    assert det.filter(score_thr=0.5, labels=[0, 1]).labels.tolist() == [1]
    assert len(det.filter()) == 4 and len(det.filter(score_thr=2.0)) == 0
    boxes_only = Detections(det.boxes, det.scores, det.labels)
    assert boxes_only.filter(0.5).masks is None and len(boxes_only.filter(0.5)) == 2


def test_numpy_gives_plain_arrays_and_full_masks_only_when_asked() -> None:
    det = _detections()
    out = det.numpy()
    assert set(out) == {"boxes", "scores", "labels"} and out["boxes"].shape == (4, 4)
    assert out["labels"].dtype == np.int64 and out["scores"].dtype == np.float32
    with_masks = det.numpy(masks=True)["masks"]
    assert with_masks.dtype == bool and np.array_equal(with_masks, det.masks.full().numpy())
    with pytest.raises(ValueError, match="no masks"):
        Detections(det.boxes, det.scores, det.labels).numpy(masks=True)


def test_to_coco_records_and_category_ids() -> None:
    det = _detections()
    records = det.to_coco(7, category_ids=[10, 20, 30])
    assert [r["category_id"] for r in records] == [20, 10, 30, 20] and {r["image_id"] for r in records} == {7}
    assert records[0]["bbox"] == [4.0, 6.0, 16.0, 24.0] and records[0]["score"] == pytest.approx(0.9)
    decoded = mask_utils.decode({"size": [H, W], "counts": records[2]["segmentation"]["counts"].encode()})
    assert np.array_equal(decoded.astype(bool), det.masks.mask(2).numpy())
    assert [r["category_id"] for r in det.to_coco(1)] == [2, 1, 3, 2]  # other classes: 1..N in class order
    coco = Detections(det.boxes, det.scores, torch.tensor([0, 11, 79, 1]), class_names=COCO_CLASSES)
    assert [r["category_id"] for r in coco.to_coco(1)] == [1, 13, 90, 2]  # COCO's own ids, not 1..80
    assert "segmentation" not in coco.to_coco(1)[0]
    assert [r["category_id"] for r in Detections(det.boxes, det.scores, det.labels).to_coco(1)] == [2, 1, 3, 2]
    with pytest.raises(ValueError, match="label 2 has no category id"):
        det.to_coco(1, category_ids={0: 5, 1: 6})


def test_plot_tints_each_mask_in_its_window_as_blending_the_whole_image() -> None:
    det, image = _detections(), _image()
    alpha = 0.45
    # the formula of a whole-image float32 blend (masks do not overlap, so each pixel is blended once)
    want = image.astype(np.float32)
    full = det.masks.full().numpy()
    for i in (0, 2, 3):  # scoring >= 0.3
        tint = np.array(class_colour(int(det.labels[i])), dtype=np.float32)
        want[full[i]] = want[full[i]] * (1 - alpha) + tint * alpha
    want = want.clip(0, 255).astype(np.uint8)
    got = det.plot(image, score_thr=0.3, mask_alpha=alpha)
    assert got.dtype == np.uint8 and got.shape == image.shape and got.flags.writeable
    away = np.ones((H, W), dtype=bool)  # pixels clear of every box outline and label
    for x1, y1, x2, y2 in ([int(v) for v in b] for b in BOXES):
        away[max(y1 - 14, 0) : y1 + 16, max(x1 - 3, 0) : x1 + 50] = False  # the label, above or inside
        for y in (y1, y2):
            away[max(y - 3, 0) : y + 3, max(x1 - 3, 0) : x2 + 3] = False
        for x in (x1, x2):
            away[max(y1 - 3, 0) : y2 + 3, max(x - 3, 0) : x + 3] = False
    assert away[full[0]].any() and away[~full.any(0)].any()
    assert np.array_equal(got[away], want[away])
    assert np.array_equal(got[14:20, 40:50], image[14:20, 40:50])  # inside detection 1's box: untouched
    assert not np.array_equal(det.plot(image, score_thr=0.0), got)
    assert np.array_equal(image, _image())  # the input is not drawn on


def test_plot_draws_on_the_given_image_else_its_own_else_its_file(tmp_path) -> None:
    image = _image(1)
    det = _detections()
    with pytest.raises(ValueError, match="no image"):
        det.plot()
    path = tmp_path / "photo.png"
    Image.fromarray(image).save(path)
    assert np.array_equal(_detections(path=str(path)).plot(), det.plot(image))
    assert np.array_equal(_detections(image=image).plot(), det.plot(image))
    assert np.array_equal(_detections(image=_image(2)).plot(image), det.plot(image))
    written = det.save(tmp_path / "out" / "drawn.png", image, score_thr=0.5)
    assert np.array_equal(np.asarray(Image.open(written)), det.plot(image, score_thr=0.5))
    with pytest.raises(ValueError, match="masks are for a"):
        det.plot(np.zeros((H + 1, W, 3), dtype=np.uint8))
    assert " image=" not in repr(_detections(image=image)) and "BoxMasks(4 maps of 7x7 in a 48x64" in repr(det)


def test_plot_keeps_no_full_size_float_copy() -> None:
    # a whole-image float32 blend alone would be 4x the uint8 image; the windowed one stays near
    # the output and its copies (numpy allocations are what tracemalloc sees)
    height, width = 1200, 1600
    image = np.zeros((height, width, 3), dtype=np.uint8)
    boxes = torch.tensor([[10.0, 10.0, 300.0, 400.0], [800.0, 500.0, 1500.0, 1100.0]])
    det = Detections(
        boxes, torch.ones(2), torch.zeros(2, dtype=torch.long), BoxMasks(torch.rand(2, 28, 28), boxes, (height, width))
    )
    tracemalloc.start()
    try:
        det.plot(image)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3.0 * image.nbytes
