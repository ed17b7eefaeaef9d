"""The shapes dataset: valid COCO, visible-part annotations, determinism, reuse."""

import json
import os

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from gcnet.config import DataConfig
from gcnet.data import SHAPE_CLASSES, CocoDetection, make_synthetic_coco


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    return make_synthetic_coco(root, num_train=12, num_val=4, image_size=(96, 112), seed=7)


pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _decode(seg):
    return mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode("ascii")}).astype(bool)


def test_annotations_describe_visible_masks(shapes):
    data = json.loads(open(shapes["train_ann"]).read())
    assert [c["name"] for c in data["categories"]] == list(SHAPE_CLASSES) and len(SHAPE_CLASSES) >= 4
    by_image = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    assert len(by_image) == 12 and all(1 <= len(v) <= 5 for v in by_image.values())
    for img in data["images"]:
        assert (img["height"], img["width"]) == (96, 112)
        pixels = np.asarray(Image.open(os.path.join(shapes["train_images"], img["file_name"])))
        union = np.zeros((96, 112), int)
        for a in by_image[img["id"]]:
            m = _decode(a["segmentation"])
            ys, xs = np.nonzero(m)
            assert a["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert a["area"] == m.sum() >= 16 and a["iscrowd"] == 0
            union += m
            # the visible pixels are the shape's own flat colour (std of noise ~3), not a mixture
            assert pixels[m].std(axis=0).max() < 12
        assert union.max() == 1  # occluded parts are removed: masks never overlap


def test_loads_as_training_set(shapes):
    ds = CocoDetection(shapes["train_ann"], shapes["train_images"], DataConfig(scale=(96, 96)), train=True)
    assert len(ds) == 12 and ds.class_names == SHAPE_CLASSES
    _, _, targets = ds[0]
    assert len(targets.boxes) >= 1 and targets.masks.shape[0] == len(targets.boxes)


def test_deterministic_for_a_seed(tmp_path, shapes):
    again = make_synthetic_coco(tmp_path / "b", num_train=12, num_val=4, image_size=(96, 112), seed=7)
    assert open(again["train_ann"]).read() == open(shapes["train_ann"]).read()
    for name in ("000000.png", "000003.png"):
        a = np.asarray(Image.open(os.path.join(again["val_images"], name)))
        b = np.asarray(Image.open(os.path.join(shapes["val_images"], name)))
        assert np.array_equal(a, b)
    other = make_synthetic_coco(tmp_path / "c", num_train=2, num_val=0, image_size=(96, 112), seed=8)
    first = np.asarray(Image.open(os.path.join(other["train_images"], "000000.png")))
    assert not np.array_equal(first, np.asarray(Image.open(os.path.join(shapes["train_images"], "000000.png"))))


def test_reuses_existing_files_and_size_range(tmp_path):
    paths = make_synthetic_coco(tmp_path, num_train=3, num_val=1, image_size=((64, 80), (90, 100)), seed=1)
    stamp = os.stat(paths["train_ann"]).st_mtime_ns
    make_synthetic_coco(tmp_path, num_train=3, num_val=1, image_size=((64, 80), (90, 100)), seed=1)
    assert os.stat(paths["train_ann"]).st_mtime_ns == stamp
    for img in json.loads(open(paths["train_ann"]).read())["images"]:
        assert 64 <= img["height"] <= 80 and 90 <= img["width"] <= 100
    with pytest.raises(ValueError, match="object_size"):
        make_synthetic_coco(tmp_path / "x", object_size=(2, 1))
