"""CocoDetection: label mapping, train filters, segmentation formats, resize/flip of targets, errors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from gcnet.config import DataConfig
from gcnet.data import CocoDetection, DatasetError, load_image

CFG = DataConfig(scale=(128, 64), flip_prob=0.5)  # 64x48 images -> factor min(128/64, 64/48) = 4/3


def _rle_uncompressed(mask: np.ndarray) -> dict:
    """Column-major run lengths starting with zeros, written independently of pycocotools."""
    flat = mask.flatten(order="F")
    counts, current, run = [], 0, 0
    for v in flat:
        if v != current:
            counts.append(run)
            current, run = v, 0
        run += 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def _write(tmp_path, data, images):
    (tmp_path / "img").mkdir(exist_ok=True)
    for name, (h, w) in images.items():
        Image.fromarray(np.full((h, w, 3), 100, np.uint8)).save(tmp_path / "img" / name)
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    return ann, tmp_path / "img"


def _dataset(tmp_path):
    square = np.zeros((48, 64), np.uint8)
    square[8:24, 32:48] = 1  # rows 8..23, columns 32..47
    compressed = mask_utils.encode(np.asfortranarray(square))
    compressed["counts"] = compressed["counts"].decode("ascii")
    data = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 64, "height": 48},
            {"id": 2, "file_name": "b.png", "width": 64, "height": 48},  # only crowd -> kept, no targets
            {"id": 3, "file_name": "c.png", "width": 20, "height": 48},  # too small -> dropped in train
            {"id": 4, "file_name": "d.png", "width": 48, "height": 64},  # no annotations
        ],
        "categories": [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}],
        "annotations": [
            {
                "id": 10,
                "image_id": 1,
                "category_id": 7,
                "bbox": [4, 4, 10, 20],
                "area": 200,
                "iscrowd": 0,
                "segmentation": [[4, 4, 14, 4, 14, 24, 4, 24]],
            },
            {
                "id": 11,
                "image_id": 1,
                "category_id": 3,
                "bbox": [32, 8, 16, 16],
                "area": 256,
                "iscrowd": 0,
                "segmentation": _rle_uncompressed(square),
            },
            {
                "id": 12,
                "image_id": 1,
                "category_id": 3,
                "bbox": [32, 8, 16, 16],
                "area": 256,
                "iscrowd": 0,
                "segmentation": compressed,
            },
            {
                "id": 13,
                "image_id": 1,
                "category_id": 3,
                "bbox": [0, 0, 0.5, 10],
                "area": 5,
                "iscrowd": 0,
                "segmentation": [[0, 0, 0.5, 0, 0.5, 10]],
            },  # w < 1: skipped
            {
                "id": 14,
                "image_id": 1,
                "category_id": 7,
                "bbox": [0, 0, 64, 48],
                "area": 3072,
                "iscrowd": 1,
                "segmentation": [[0, 0, 64, 0, 64, 48, 0, 48]],
            },  # crowd: not a training target
            {
                "id": 15,
                "image_id": 2,
                "category_id": 7,
                "bbox": [1, 1, 9, 9],
                "area": 81,
                "iscrowd": 1,
                "segmentation": [[1, 1, 10, 1, 10, 10]],
            },
            {
                "id": 16,
                "image_id": 3,
                "category_id": 7,
                "bbox": [1, 1, 9, 9],
                "area": 81,
                "iscrowd": 0,
                "segmentation": [[1, 1, 10, 1, 10, 10]],
            },
        ],
    }
    sizes = {"a.png": (48, 64), "b.png": (48, 64), "c.png": (48, 20), "d.png": (64, 48)}
    return _write(tmp_path, data, sizes), square


def test_labels_filters_and_targets(tmp_path):
    (ann, img_dir), square = _dataset(tmp_path)
    train = CocoDetection(ann, img_dir, DataConfig(scale=(128, 64), flip_prob=0.0), train=True)
    test = CocoDetection(ann, img_dir, CFG, train=False)
    assert train.label_to_cat_id == [3, 7] and train.cat_id_to_label == {3: 0, 7: 1}
    assert train.class_names == ("three", "seven")
    # the original's filter_empty_gt: images with no annotation entry (4) and small ones (3) go;
    # an image whose only entry is crowd (2) stays and trains on no ground truth
    assert train.image_ids == [1, 2] and test.image_ids == [1, 2, 3, 4]
    assert test.aspect_ratio_flags == [1, 1, 0, 0]

    image, meta, targets = train[0]
    assert tuple(image.shape) == (3, 64, 85) and meta.img_shape == (64, 85)
    assert meta.ori_shape == (48, 64) and meta.scale_factor == (85 / 64, 64 / 48) and not meta.flip
    sw, sh = 85 / 64, 64 / 48
    expected = torch.tensor(
        [[4 * sw, 4 * sh, 14 * sw, 24 * sh], [32 * sw, 8 * sh, 48 * sw, 24 * sh], [32 * sw, 8 * sh, 48 * sw, 24 * sh]]
    )
    assert torch.allclose(targets.boxes, expected) and targets.boxes.dtype == torch.float32
    assert targets.labels.tolist() == [1, 0, 0] and targets.labels.dtype == torch.int64
    assert targets.masks.dtype == torch.uint8 and tuple(targets.masks.shape) == (3, 64, 85)
    # both RLE flavours decode to the same square; nearest resize: row r <- floor(r * 0.75)
    assert torch.equal(targets.masks[1], targets.masks[2])
    rows = np.floor(np.arange(64) * (48 / 64)).astype(int)
    cols = np.minimum(np.floor(np.arange(85) * (1 / (85 / 64))).astype(int), 63)
    assert np.array_equal(targets.masks[1].numpy(), square[rows][:, cols])

    _, _, crowd_only = train[1]
    assert crowd_only.boxes.shape == (0, 4) and crowd_only.labels.shape == (0,)
    assert crowd_only.masks.shape == (0, 64, 85)

    _, meta_t, none_targets = test[3]
    assert none_targets is None and meta_t.ori_shape == (64, 48) and meta_t.image_id == 4


def test_flip_is_seeded_and_consistent(tmp_path):
    (ann, img_dir), _ = _dataset(tmp_path)
    ds = CocoDetection(ann, img_dir, DataConfig(scale=(128, 64), flip_prob=1.0), train=True)
    plain = CocoDetection(ann, img_dir, DataConfig(scale=(128, 64), flip_prob=0.0), train=True)
    _, meta, t = ds[0]
    _, _, t0 = plain[0]
    assert meta.flip
    w = meta.img_shape[1]
    assert torch.allclose(t.boxes[:, 0], w - t0.boxes[:, 2]) and torch.allclose(t.boxes[:, 2], w - t0.boxes[:, 0])
    assert torch.equal(t.masks, t0.masks.flip(-1))
    half = CocoDetection(ann, img_dir, CFG, train=True)
    torch.manual_seed(123)
    first = [half[0][1].flip for _ in range(12)]
    torch.manual_seed(123)
    assert [half[0][1].flip for _ in range(12)] == first and len(set(first)) == 2


def test_load_image_applies_exif_orientation(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    img.save(tmp_path / "r.jpg", exif=exif.tobytes())
    assert load_image(tmp_path / "r.jpg").shape == (40, 20, 3)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match="bad.png"):
        load_image(tmp_path / "bad.png")


def _base():
    return {
        "images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 48}],
        "categories": [{"id": 1, "name": "x"}],
        "annotations": [
            {
                "id": 5,
                "image_id": 1,
                "category_id": 1,
                "bbox": [1, 1, 10, 10],
                "area": 100,
                "segmentation": [[1, 1, 11, 1, 11, 11]],
            }
        ],
    }


@pytest.mark.parametrize(
    "mutate,pattern",
    [
        (lambda d: d["annotations"][0].update(image_id=9), "unknown image_id 9"),
        (lambda d: d["annotations"][0].update(category_id=4), "unknown category_id 4"),
        (lambda d: d["annotations"][0].pop("bbox"), r"annotations\[0\].*missing key"),
        (lambda d: d.pop("categories"), "missing key"),
        (lambda d: d["images"][0].pop("file_name"), r"images\[0\]"),
    ],
)
def test_malformed_json_names_file_and_entry(tmp_path, mutate, pattern):
    data = _base()
    mutate(data)
    ann, img_dir = _write(tmp_path, data, {"a.png": (48, 64)})
    with pytest.raises(DatasetError, match=pattern) as info:
        CocoDetection(ann, img_dir, CFG, train=True)
    assert "ann.json" in str(info.value)


def test_bad_json_and_missing_image(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    with pytest.raises(DatasetError, match="broken.json"):
        CocoDetection(bad, tmp_path, CFG)
    ann, img_dir = _write(tmp_path, _base(), {})
    with pytest.raises(DatasetError, match="a.png: image file not found"):
        CocoDetection(ann, img_dir, CFG, train=True)  # checked at load, before any work
    _write(tmp_path, _base(), {"a.png": (48, 64)})
    ds = CocoDetection(ann, img_dir, CFG, train=True)
    (img_dir / "a.png").unlink()  # gone after the load: met when read
    with pytest.raises(DatasetError, match="a.png"):
        ds[0]
