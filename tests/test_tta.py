"""Horizontal-flip test-time augmentation (model.test_flip, gcnet --tta), merged as mmdet 3.x does."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import batched_nms

from gcnet.checkpoint import save_checkpoint
from gcnet.cli import _build_parser, main
from gcnet.config import config_to_dict
from gcnet.models.config import ModelConfig
from gcnet.models.detector import TwoStageDetector
from gcnet.models.tta import flip_batch
from gcnet.structures import Detections, ImageMeta, Targets
from tiny_models import tiny_config

ORI = (192, 256)  # the original image; the batch holds it resized by 0.5 to 96x128 (no padding)


def _detector(test_flip: bool) -> TwoStageDetector:
    cfg = tiny_config()
    torch.manual_seed(0)
    model = TwoStageDetector(dataclasses.replace(cfg.model, test_flip=test_flip), cfg.class_names).eval()
    with torch.no_grad():  # confident enough that each view keeps its 10 best of many
        model.roi_head.bbox_head.fc_cls.bias[:-1] += 2.0
    return model


@pytest.fixture(scope="module")
def models() -> tuple[TwoStageDetector, TwoStageDetector]:
    plain = _detector(False)
    tta = _detector(True)
    tta.load_state_dict(plain.state_dict())
    return plain, tta


def _batch() -> tuple[torch.Tensor, list[ImageMeta]]:
    torch.manual_seed(1)
    images = torch.randn(1, 3, 96, 128)
    return images, [ImageMeta(img_shape=(96, 128), ori_shape=ORI, scale_factor=(0.5, 0.5))]


@pytest.fixture(scope="module")
def runs(models) -> dict[str, Detections]:
    """Each forward the tests compare, run once: plain and TTA, on the image and on its mirror."""
    plain, tta = models
    images, metas = _batch()
    flipped_metas = [dataclasses.replace(metas[0], flip=True)]
    with torch.no_grad():
        return {
            "plain": plain(images, metas)[0],
            "plain_of_mirror": plain(images.flip(-1), flipped_metas)[0],
            "tta": tta(images, metas)[0],
            "tta_of_mirror": tta(images.flip(-1), metas)[0],
        }


def _mirror_boxes(boxes: torch.Tensor, width: int) -> torch.Tensor:
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)


def _by_score(det: Detections) -> torch.Tensor:
    return det.scores.argsort(descending=True, stable=True)


def test_off_by_default_and_the_plain_forward_unchanged(models, runs) -> None:
    assert ModelConfig().test_flip is False
    plain, _ = models
    images, metas = _batch()
    out = runs["plain"]
    with torch.no_grad():  # the forward as it was before test-time augmentation existed, by hand
        feats = plain.neck(plain.backbone(images))
        logits, deltas = plain.rpn_head(feats)
        proposals = plain.rpn_proposals(logits, deltas, metas, training=False)
        reference = plain.roi_head(feats, proposals, metas)[0]
    assert len(out) > 0
    assert torch.equal(out.boxes, reference.boxes) and torch.equal(out.scores, reference.scores)
    assert torch.equal(out.labels, reference.labels)
    assert out.masks is not None and reference.masks is not None
    assert torch.equal(out.masks.probs, reference.masks.probs)


def test_merge_equals_nms_over_the_two_views_by_hand(models, runs) -> None:
    plain, _ = models
    merged, direct, mirrored = runs["tta"], runs["plain"], runs["plain_of_mirror"]
    width = ORI[1]
    boxes = torch.cat([_mirror_boxes(mirrored.boxes, width), direct.boxes])  # mmdet's order: flipped view first
    scores = torch.cat([mirrored.scores, direct.scores])
    labels = torch.cat([mirrored.labels, direct.labels])
    keep = batched_nms(boxes, scores, labels, 0.5)[: plain.cfg.roi.max_per_img]
    assert len(keep) > len(direct) // 2 and len(merged) == len(keep)
    assert (keep < len(mirrored)).any() and (keep >= len(mirrored)).any()  # both views contribute
    torch.testing.assert_close(merged.boxes, boxes[keep], rtol=0, atol=1e-4)
    assert torch.equal(merged.scores, scores[keep]) and torch.equal(merged.labels, labels[keep])
    assert merged.class_names == plain.class_names
    # each kept detection carries the mask of its own view, mirrored back for the flipped view
    assert merged.masks is not None and direct.masks is not None and mirrored.masks is not None
    by_hand = torch.cat([mirrored.masks.full().flip(-1), direct.masks.full()])[keep]
    assert merged.masks.image_shape == ORI
    assert (merged.masks.full() != by_hand).float().mean() < 1e-4  # up to pixels at float rounding


def test_tta_of_a_mirrored_image_is_the_mirrored_tta(runs) -> None:
    out, out_of_mirror = runs["tta"], runs["tta_of_mirror"]
    assert len(out) == len(out_of_mirror) > 0
    a, b = _by_score(out), _by_score(out_of_mirror)
    torch.testing.assert_close(out_of_mirror.scores[b], out.scores[a], rtol=0, atol=1e-6)
    assert torch.equal(out_of_mirror.labels[b], out.labels[a])
    torch.testing.assert_close(out_of_mirror.boxes[b], _mirror_boxes(out.boxes[a], ORI[1]), rtol=0, atol=1e-3)
    assert out.masks is not None and out_of_mirror.masks is not None
    differ = out_of_mirror.masks.full()[b] != out.masks.full()[a].flip(-1)
    assert differ.float().mean() < 1e-4


def test_the_flipped_view_mirrors_the_image_not_its_padding() -> None:
    images = torch.arange(2 * 1 * 4 * 6, dtype=torch.float32).reshape(2, 1, 4, 6)
    metas = [
        ImageMeta(img_shape=(3, 4), ori_shape=(6, 8), scale_factor=(0.5, 0.5)),
        ImageMeta(img_shape=(4, 6), ori_shape=(4, 6), scale_factor=(1.0, 1.0)),
    ]
    flipped, flipped_metas = flip_batch(images, metas)
    assert torch.equal(flipped[0, :, :3, :4], images[0, :, :3, :4].flip(-1))
    assert torch.equal(flipped[0, :, 3:], images[0, :, 3:]) and torch.equal(flipped[0, :, :, 4:], images[0, :, :, 4:])
    assert torch.equal(flipped[1], images[1].flip(-1))
    assert [m.flip for m in flipped_metas] == [True, True] and not any(m.flip for m in metas)


def test_training_losses_ignore_test_flip(models) -> None:
    plain, tta = models
    images, metas = _batch()
    targets = [
        Targets(torch.tensor([[10.0, 10.0, 60.0, 50.0]]), torch.tensor([1]), torch.ones(1, 96, 128, dtype=torch.uint8))
    ]
    plain.train()
    tta.train()
    try:
        torch.manual_seed(3)
        a = plain(images, metas, targets)
        torch.manual_seed(3)
        b = tta(images, metas, targets)
    finally:
        plain.eval()
        tta.eval()
    assert isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_tta_is_the_test_flip_override(tmp_path) -> None:
    parser = _build_parser()
    for command in (["predict", "m", "x.png", "--out", "o"], ["test", "m", "--data", "d", "--images", "i"]):
        assert parser.parse_args([*command, "--tta"]).overrides == ["model.test_flip=True"]
        assert parser.parse_args([*command, "--set", "train.lr=0.1", "--tta"]).overrides == [
            "train.lr=0.1",
            "model.test_flip=True",
        ]
        assert parser.parse_args(command).overrides == []


def test_cli_predict_with_tta(tmp_path) -> None:
    plain = _detector(False)
    cfg = tiny_config()
    meta = {"config": config_to_dict(cfg), "class_names": list(cfg.class_names)}
    ckpt = save_checkpoint(tmp_path / "tiny.pth", plain, meta=meta)
    rng = np.random.default_rng(0)
    array = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
    array[20:70, 30:90] = (250, 40, 40)
    Image.fromarray(array).save(tmp_path / "img.png")

    def run(*flags: str) -> list[dict]:
        out = tmp_path / "_".join(flags or ("plain",)).strip("-")
        argv = ["predict", str(ckpt), str(tmp_path / "img.png"), "--out", str(out), "--score-thr", "0", *flags]
        assert main(argv) == 0
        return json.loads((out / "detections.json").read_text())

    with_tta, by_override, without = run("--tta"), run("--set", "model.test_flip=True"), run()
    assert with_tta == by_override
    assert with_tta and without and with_tta != without
