"""The assembled detector: full checkpoint key sets of every zoo config (written from the spec's
rules), train/eval contracts, batching, and a save -> load round trip in the original's layout."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from gcnet.checkpoint import load_checkpoint, save_checkpoint
from gcnet.config import BackboneConfig, Config, FPNConfig, ModelConfig, RoIConfig, RPNConfig
from gcnet.models.detector import TwoStageDetector, build_model, total_loss
from gcnet.structures import ImageMeta, Targets
from gcnet.zoo import ZOO

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _bn(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.{k}": ((c,) if k != "num_batches_tracked" else ()) for k in BN}


def expected_keys(
    depth: int, groups: int, base_width: int, gc_ratio: float | None, dcn: bool, cascade: bool
) -> dict[str, tuple[int, ...]]:
    """Every state_dict key and shape of the original's detector, from the spec's naming rules."""
    blocks = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]
    keys: dict[str, tuple[int, ...]] = {"backbone.conv1.weight": (64, 3, 7, 7), **_bn("backbone.bn1", 64)}
    inplanes = 64
    for stage, n in enumerate(blocks):
        planes = 64 * 2**stage
        width = planes * base_width // 64 * groups if groups > 1 else planes
        out = planes * 4
        for b in range(n):
            p = f"backbone.layer{stage + 1}.{b}"
            cin = inplanes if b == 0 else out
            keys[f"{p}.conv1.weight"] = (width, cin, 1, 1)
            keys.update(_bn(f"{p}.bn1", width))
            keys[f"{p}.conv2.weight"] = (width, width // groups, 3, 3)
            if dcn and stage > 0:
                keys[f"{p}.conv2.conv_offset.weight"] = (18, width, 3, 3)
                keys[f"{p}.conv2.conv_offset.bias"] = (18,)
            keys.update(_bn(f"{p}.bn2", width))
            keys[f"{p}.conv3.weight"] = (out, width, 1, 1)
            keys.update(_bn(f"{p}.bn3", out))
            if b == 0:
                keys[f"{p}.downsample.0.weight"] = (out, cin, 1, 1)
                keys.update(_bn(f"{p}.downsample.1", out))
            if gc_ratio is not None and stage > 0:
                g, planes_gc = f"{p}.context_block", int(out * gc_ratio)
                keys.update(
                    {
                        f"{g}.conv_mask.weight": (1, out, 1, 1),
                        f"{g}.conv_mask.bias": (1,),
                        f"{g}.channel_add_conv.0.weight": (planes_gc, out, 1, 1),
                        f"{g}.channel_add_conv.0.bias": (planes_gc,),
                        f"{g}.channel_add_conv.1.weight": (planes_gc, 1, 1),
                        f"{g}.channel_add_conv.1.bias": (planes_gc, 1, 1),
                        f"{g}.channel_add_conv.3.weight": (out, planes_gc, 1, 1),
                        f"{g}.channel_add_conv.3.bias": (out,),
                    }
                )
        inplanes = out
    for i, c in enumerate((256, 512, 1024, 2048)):
        keys[f"neck.lateral_convs.{i}.conv.weight"] = (256, c, 1, 1)
        keys[f"neck.lateral_convs.{i}.conv.bias"] = (256,)
        keys[f"neck.fpn_convs.{i}.conv.weight"] = (256, 256, 3, 3)
        keys[f"neck.fpn_convs.{i}.conv.bias"] = (256,)
    keys.update(
        {
            "rpn_head.rpn_conv.weight": (256, 256, 3, 3),
            "rpn_head.rpn_conv.bias": (256,),
            "rpn_head.rpn_cls.weight": (3, 256, 1, 1),
            "rpn_head.rpn_cls.bias": (3,),
            "rpn_head.rpn_reg.weight": (12, 256, 1, 1),
            "rpn_head.rpn_reg.bias": (12,),
        }
    )
    stages = [f".{i}" for i in range(3)] if cascade else [""]
    reg = 4 if cascade else 320
    for s in stages:
        bh, mh = f"roi_head.bbox_head{s}", f"roi_head.mask_head{s}"
        keys.update(
            {
                f"{bh}.shared_fcs.0.weight": (1024, 12544),
                f"{bh}.shared_fcs.0.bias": (1024,),
                f"{bh}.shared_fcs.1.weight": (1024, 1024),
                f"{bh}.shared_fcs.1.bias": (1024,),
                f"{bh}.fc_cls.weight": (81, 1024),
                f"{bh}.fc_cls.bias": (81,),
                f"{bh}.fc_reg.weight": (reg, 1024),
                f"{bh}.fc_reg.bias": (reg,),
            }
        )
        for i in range(4):
            keys[f"{mh}.convs.{i}.conv.weight"] = (256, 256, 3, 3)
            keys[f"{mh}.convs.{i}.conv.bias"] = (256,)
        keys.update(
            {
                f"{mh}.upsample.weight": (256, 256, 2, 2),
                f"{mh}.upsample.bias": (256,),
                f"{mh}.conv_logits.weight": (80, 256, 1, 1),
                f"{mh}.conv_logits.bias": (80,),
            }
        )
    return keys


def _meta_state(cfg: Config) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = TwoStageDetector(cfg.model, cfg.class_names)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", list(ZOO))
def test_every_zoo_config_has_the_original_keys_and_shapes(name: str) -> None:
    cfg = ZOO[name].config
    bb = cfg.model.backbone
    expected = expected_keys(bb.depth, bb.groups, bb.base_width, bb.gc_ratio, any(bb.dcn_stages), cfg.model.roi.cascade)
    got = _meta_state(cfg)
    assert sorted(set(expected) - set(got)) == [] and sorted(set(got) - set(expected)) == []
    assert {k: v for k, v in got.items() if expected[k] != v} == {}


def test_spec_whole_model_counts_and_two_configs_key_by_key() -> None:
    """Spec 8.2 counts, and two configs compared entry by entry in order-independent form."""
    r50 = _meta_state(ZOO["mask-rcnn_r50-gcb-r4-c3-c5_fpn_1x_coco"].config)
    assert len(r50) == 464
    assert r50["backbone.layer2.0.context_block.channel_add_conv.0.weight"] == (128, 512, 1, 1)
    assert r50["roi_head.bbox_head.fc_reg.weight"] == (320, 1024)
    dcn = _meta_state(ZOO["cascade-mask-rcnn_x101-32x4d-syncbn-dconv-c3-c5-r16-gcb-c3-c5_fpn_1x_coco"].config)
    assert len(dcn) == 1006
    assert sum(".conv_offset." in k for k in dcn) == 60
    assert dcn["backbone.layer3.0.conv2.weight"] == (512, 16, 3, 3)
    assert dcn["backbone.layer3.0.conv2.conv_offset.weight"] == (18, 512, 3, 3)
    assert dcn["roi_head.bbox_head.2.fc_reg.weight"] == (4, 1024)
    assert len(_meta_state(ZOO["cascade-mask-rcnn_x101-32x4d-syncbn-r16-gcb-c3-c5_fpn_1x_coco"].config)) == 946


def tiny_config(cascade: bool = False) -> Config:
    """A narrow detector for fast CPU tests (same structure as the zoo models)."""
    roi = RoIConfig(num_classes=3, in_channels=32, fc_channels=64, num_samples=32)
    if cascade:
        from gcnet.models.roi import cascade_stages

        roi = dataclasses.replace(roi, stages=cascade_stages())
    model = ModelConfig(
        backbone=BackboneConfig(
            depth=50, base_channels=8, gc_ratio=1 / 4, pretrained=None, frozen_stages=-1, norm_eval=False
        ),
        neck=FPNConfig(in_channels=(32, 64, 128, 256), out_channels=32),
        rpn=RPNConfig(
            in_channels=32,
            feat_channels=32,
            test_nms_pre=100,
            test_max_per_img=50,
            train_nms_pre=100,
            train_max_per_img=50,
        ),
        roi=roi,
    )
    return Config(name="tiny", model=model, class_names=("a", "b", "c"))


def _inputs() -> tuple[torch.Tensor, list[ImageMeta], list[Targets]]:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 96, 128, generator=g)
    metas = [ImageMeta((96, 128), (48, 64), (2.0, 2.0)), ImageMeta((80, 112), (80, 112), (1.0, 1.0))]
    targets = []
    for h, w in ((96, 128), (80, 112)):
        masks = torch.zeros(2, h, w, dtype=torch.uint8)
        masks[0, 10:40, 20:60] = 1
        masks[1, 50:75, 5:30] = 1
        targets.append(Targets(torch.tensor([[20.0, 10, 60, 40], [5, 50, 30, 75]]), torch.tensor([0, 2]), masks))
    return images, metas, targets


@pytest.mark.parametrize("cascade", [False, True])
def test_train_losses_and_eval_detections(cascade: bool) -> None:
    torch.manual_seed(0)
    cfg = tiny_config(cascade)
    model = build_model(cfg.model, cfg.class_names).train()
    images, metas, targets = _inputs()
    losses = model(images, metas, targets)
    assert {"loss_rpn_cls", "loss_rpn_bbox"} <= set(losses)
    assert any("loss_mask" in k for k in losses)
    loss = total_loss(losses)
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.roi_head.parameters()]
    assert all(g is not None for g in grads)

    model.eval()
    with torch.no_grad():
        dets = model(images, metas)
        same_size = [metas[0], dataclasses.replace(metas[0], ori_shape=(96, 128), scale_factor=(1.0, 1.0))]
        pair = model(images, same_size)
        alone = model(images[1:], same_size[1:])
    assert len(dets) == 2
    for det, meta in zip(dets, metas):
        assert det.masks is not None and det.masks.shape[1:] == meta.ori_shape
        assert det.class_names == ("a", "b", "c")
        if len(det):
            assert float(det.boxes[:, 2].max()) <= meta.ori_shape[1] + 1e-3
    # an image batched with another of the same padded size gives the same detections as alone
    torch.testing.assert_close(pair[1].boxes, alone[0].boxes, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(pair[1].scores, alone[0].scores, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cascade", [False, True])
def test_images_without_ground_truth_train_as_all_negatives(cascade: bool) -> None:
    """Crowd-only images stay in the original's training set and bring no targets: every loss stays
    finite, an all-empty batch has zero regression and mask losses (there are no positives) but still
    a classification loss, and the gradients reach the heads."""
    torch.manual_seed(0)
    cfg = tiny_config(cascade)
    model = build_model(cfg.model, cfg.class_names).train()
    images, metas, targets = _inputs()
    empty = [Targets(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), t.masks[:0]) for t in targets]
    mixed = model(images, metas, [empty[0], targets[1]])
    assert all(torch.isfinite(v) for v in mixed.values())
    assert mixed["loss_rpn_bbox"].item() > 0  # the second image's positives
    losses = model(images, metas, empty)
    assert all(torch.isfinite(v) for v in losses.values())
    for key, value in losses.items():
        if "bbox" in key or "mask" in key:
            assert value.item() == 0.0, key
        else:
            assert value.item() > 0.0, key
    total_loss(losses).backward()
    assert model.rpn_head.rpn_cls.weight.grad.abs().sum() > 0


def test_metas_must_match_batch() -> None:
    cfg = tiny_config()
    model = build_model(cfg.model, cfg.class_names).eval()
    images, metas, _ = _inputs()
    with pytest.raises(ValueError, match="metas"):
        model(images, metas[:1])


def test_save_and_load_in_original_layout_round_trips(tmp_path) -> None:
    torch.manual_seed(0)
    cfg = tiny_config(cascade=True)
    model = build_model(cfg.model, cfg.class_names)
    for p in model.parameters():  # non-trivial heads so that detections exist
        p.data.add_(torch.randn_like(p) * 0.01)
    model.eval()
    images, metas, _ = _inputs()
    path = save_checkpoint(tmp_path / "m.pth", model, {"CLASSES": list(cfg.class_names), "epoch": 12})
    raw = torch.load(path, weights_only=True)
    assert set(raw) >= {"state_dict", "meta"}
    assert all(k.split(".")[0] in {"backbone", "neck", "rpn_head", "roi_head"} for k in raw["state_dict"])
    other = build_model(cfg.model, cfg.class_names)
    meta = load_checkpoint(other, path)
    assert meta["epoch"] == 12
    other.eval()
    with torch.no_grad():
        a, b = model(images, metas), other(images, metas)
    for x, y in zip(a, b):
        torch.testing.assert_close(x.boxes, y.boxes, rtol=0, atol=0)
        torch.testing.assert_close(x.scores, y.scores, rtol=0, atol=0)
        assert torch.equal(x.masks.full(), y.masks.full())


def test_build_detector_loads_a_checkpoint_and_has_a_fast_mode(tmp_path) -> None:
    import gcnet
    from gcnet.speed import FastConv2d

    torch.manual_seed(0)
    cfg = tiny_config()
    trained = build_model(cfg.model, cfg.class_names).eval()
    path = tmp_path / "tiny.pth"
    save_checkpoint(path, trained)
    model = gcnet.build_detector(cfg, checkpoint=str(path))
    fast = gcnet.build_detector(cfg, checkpoint=str(path), fast=True)
    assert not model.training and not fast.training
    assert not any(isinstance(m, FastConv2d) for m in model.modules())
    assert any(isinstance(m, FastConv2d) for m in fast.modules())
    for key, value in trained.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    images, metas, _ = _inputs()
    with torch.inference_mode():
        ref, plain, quick = trained(images, metas), model(images, metas), fast(images, metas)
    assert sum(len(r) for r in ref) > 0  # not vacuous
    for r, p, q in zip(ref, plain, quick):
        assert torch.equal(r.boxes, p.boxes) and torch.equal(r.scores, p.scores)
        assert torch.equal(r.labels, q.labels)
        torch.testing.assert_close(q.boxes, r.boxes, atol=1e-3, rtol=0)
