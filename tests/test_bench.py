"""gcnet.bench: input geometry, timing protocol, memory meter, reporting (structure, not speed)."""

from __future__ import annotations

import dataclasses
import math
import time

import pytest
import torch
from torch import Tensor, nn

from gcnet import bench
from gcnet.config import Config, DataConfig
from gcnet.masks import BoxMasks
from gcnet.structures import Detections, ImageMeta

torch.set_num_threads(1)


class StandInDetector(nn.Module):
    """Follows the detector contract: detections in ori_shape at test, a loss dict in training."""

    def __init__(self, num_dets: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.num_dets = num_dets
        self.calls = 0
        self.seen: list[tuple[tuple[int, ...], list[ImageMeta], bool, torch.dtype | None]] = []

    def forward(self, images: Tensor, metas: list[ImageMeta], targets=None):
        self.calls += 1
        amp = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
        self.seen.append((tuple(images.shape), metas, torch.is_grad_enabled(), amp))
        feat = self.conv(images)
        if targets is not None:
            return {"loss_a": feat.pow(2).mean(), "loss_b": feat.abs().mean(), "acc": feat.mean().detach()}
        out = []
        for meta in metas:
            h, w = meta.ori_shape
            n = self.num_dets
            out.append(
                Detections(
                    boxes=torch.zeros(n, 4),
                    scores=torch.full((n,), float(feat.mean())),
                    labels=torch.zeros(n, dtype=torch.long),
                    masks=BoxMasks(torch.zeros(n, 28, 28), torch.zeros(n, 4), (h, w)),
                )
            )
        return out


@pytest.mark.parametrize(
    "ori,expected",
    [
        # 640x427 COCO image: f = min(1333/640, 800/427) = 800/427; 640 * 800/427 = 1199.06 -> 1199
        ((427, 640), (800, 1199)),
        ((800, 1333), (800, 1333)),
        ((1000, 1000), (800, 800)),
        # long edge binds: f = 1333/1000; 200 * 1.333 = 266.6 -> int(267.1) = 267
        ((200, 1000), (267, 1333)),
    ],
)
def test_resized_shape_matches_the_test_pipeline(ori, expected):
    assert bench.resized_shape(ori) == expected


def test_resized_shape_rejects_bad_size():
    with pytest.raises(ValueError, match="image_size"):
        bench.resized_shape((0, 10))


def test_synthetic_input_is_padded_with_zeros_to_32():
    images, metas = bench.synthetic_input((427, 640))
    assert images.shape == (1, 3, 800, 1216)
    assert metas[0].img_shape == (800, 1199) and metas[0].ori_shape == (427, 640)
    assert metas[0].scale_factor == pytest.approx((1199 / 640, 800 / 427))
    assert images[..., 1199:].abs().sum() == 0
    assert images[..., :1199].std() > 0.5  # noise of unit variance inside the image


def test_bench_result_statistics_by_hand():
    r = bench.BenchResult("m", "inference", "cpu", "fp32", False, (32, 32), 1, (10.0, 20.0, 60.0), None, "")
    assert r.iters == 3 and r.median_ms == 20.0 and r.mean_ms == 30.0
    assert r.fps == pytest.approx(1000 / 30)
    r2 = dataclasses.replace(r, batch_size=2, peak_mem_mb=2048.0)
    assert r2.fps == pytest.approx(2000 / 30) and r2.peak_mem_gb == 2.0


def test_benchmark_inference_protocol():
    model = StandInDetector(num_dets=3)
    data = DataConfig(scale=(64, 48))
    res = bench.benchmark_inference(model, (30, 40), warmup=2, iters=3, data=data, name="stand-in")
    assert model.calls == 5  # warm-up calls run but are not timed
    assert res.iters == 3 and all(t > 0 for t in res.times_ms)
    assert res.fps == pytest.approx(1000 / res.mean_ms)
    # (30, 40): f = min(64/40, 48/30) = 1.6 -> (48, 64), already a multiple of 32
    assert res.input_shape == (64, 64) and model.seen[0][0] == (1, 3, 64, 64)
    assert model.seen[0][1][0].ori_shape == (30, 40)
    assert not model.seen[0][2]  # no autograd during inference
    assert res.detections_per_image == 3.0 and res.mode == "inference" and res.name == "stand-in"
    assert res.peak_mem_mb is not None and "RSS" in res.mem_note


def test_benchmark_inference_autocast_dtypes():
    model = StandInDetector()
    bench.benchmark_inference(model, (32, 32), dtype="bf16", warmup=0, iters=1, data=DataConfig(scale=(32, 32)))
    assert model.seen[-1][3] == torch.bfloat16
    bench.benchmark_inference(model, (32, 32), dtype="fp32", warmup=0, iters=1, data=DataConfig(scale=(32, 32)))
    assert model.seen[-1][3] is None
    with pytest.raises(ValueError, match="dtype must be one of"):
        bench.benchmark_inference(model, (32, 32), dtype="int8", warmup=0, iters=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="iters"):
        bench.benchmark_inference(model, (32, 32), warmup=0, iters=0)


def test_benchmark_inference_real_image_list_uses_preprocess():
    pytest.importorskip("gcnet.data")
    if not hasattr(__import__("gcnet.data", fromlist=["preprocess"]), "preprocess"):
        pytest.skip("gcnet.data.preprocess not written yet")
    import numpy as np

    model = StandInDetector()
    imgs = [np.zeros((30, 40, 3), np.uint8), np.full((40, 30, 3), 200, np.uint8)]
    res = bench.benchmark_inference(model, imgs, warmup=0, iters=2, data=DataConfig(scale=(64, 48)))
    assert [m[1][0].ori_shape for m in model.seen] == [(30, 40), (40, 30)]
    assert res.input_shape == (64, 64)


def test_training_step_updates_weights_at_two_images():
    model = StandInDetector()
    before = model.conv.weight.detach().clone()
    res = bench.benchmark_training_step(model, (32, 32), warmup=1, iters=2, data=DataConfig(scale=(32, 32)))
    assert res.mode == "train" and res.batch_size == 2 and res.iters == 2
    assert model.seen[0][0][0] == 2 and model.seen[0][2]  # two images, autograd on
    assert not torch.equal(before, model.conv.weight)
    assert res.fps == pytest.approx(2000 / res.mean_ms)
    assert math.isfinite(res.extra["last_loss"])


def test_synthetic_targets_lie_inside_the_image():
    meta = ImageMeta(img_shape=(50, 70), ori_shape=(50, 70), scale_factor=(1.0, 1.0))
    t = bench.synthetic_targets(meta, num_classes=3, num_boxes=5)
    assert t.boxes.shape == (5, 4) and t.masks.shape == (5, 50, 70)
    assert (t.boxes[:, 0] >= 0).all() and (t.boxes[:, 2] <= 70 + 1e-4).all() and (t.boxes[:, 3] <= 50 + 1e-4).all()
    assert ((t.boxes[:, 2:] - t.boxes[:, :2]) >= 16 - 1e-4).all()
    assert t.labels.max() < 3
    # each mask is the filled (rounded) box: its area equals the rounded box area
    r = t.boxes.round()
    assert torch.equal(t.masks.sum((1, 2)), ((r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1])).long())


def test_cpu_memory_meter_sees_a_large_allocation():
    with bench._MemoryMeter(torch.device("cpu")) as meter:
        big = torch.ones(48 * 2**20 // 4 * 4)  # 192 MiB, pages touched
        time.sleep(0.03)
    assert big.sum() > 0
    assert meter.peak_mb is not None and meter.peak_mb > 150


def test_format_row_columns_and_values():
    r = bench.BenchResult("cfg-x", "inference", "cpu", "bf16", True, (800, 1216), 1, (50.0, 50.0), 1536.0, "")
    row = bench.format_row(r)
    header = bench.ROW_HEADER.splitlines()[0]
    assert row.count("|") == header.count("|")
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[0] == "cfg-x" and cells[3] == "bf16 +compile" and cells[4] == "800x1216"
    assert cells[5] == "1.50" and cells[6] == "20.00" and cells[7] == "50.0"


def test_format_row_shows_seed_numbers_from_the_zoo():
    zoo = pytest.importorskip("gcnet.zoo")
    name = "mask-rcnn_r50-gcb-r4-c3-c5_fpn_1x_coco"
    if name not in getattr(zoo, "ZOO", {}):
        pytest.skip("zoo has no entry yet")
    mem, fps = bench._seed_numbers(name)
    r = bench.BenchResult(name, "inference", "cpu", "fp32", False, (800, 1216), 1, (100.0,), None, "")
    cells = [c.strip() for c in bench.format_row(r).strip("|").split("|")]
    # the seed's table: 5.1 GB, 15.0 fps for this row
    assert (mem, fps) == (pytest.approx(5.1), pytest.approx(15.0))
    assert cells[8:] == ["5.1", "15.0"]


def test_peer_is_torchvision_maskrcnn_with_forced_budget():
    peer = bench.torchvision_peer(
        num_classes=3, proposals=50, detections=7, score_thresh=0.0, data=DataConfig(scale=(96, 64))
    )
    assert peer.rpn._pre_nms_top_n["testing"] == 50 and peer.rpn._post_nms_top_n["testing"] == 50
    assert peer.roi_heads.detections_per_img == 7 and peer.roi_heads.score_thresh == 0.0
    assert peer.roi_heads.box_predictor.cls_score.out_features == 4
    res = bench.benchmark_peer(peer, (64, 80), warmup=0, iters=1)
    assert res.input_shape == (64, 96)  # 64x80 -> torchvision resize keeps it, pads 80 to 96
    assert res.detections_per_image == 7.0  # score_thresh 0 keeps the full budget


def _tiny_config() -> Config:
    from tiny_models import tiny_config

    return tiny_config()


def test_run_bench_on_a_tiny_real_detector():
    torch.manual_seed(0)
    results = bench.run_bench(_tiny_config(), iters=2, warmup=1, image_size=(96, 128), train=True)
    inf, train = results
    assert inf.mode == "inference" and inf.iters == 2 and inf.input_shape == (96, 128)
    assert 0 <= inf.detections_per_image <= 10
    assert train.mode == "train" and train.batch_size == 2 and math.isfinite(train.extra["last_loss"])
    assert "tiny" in bench.format_row(inf)


def test_run_bench_fast_mode_times_the_prepared_model_and_peer(monkeypatch):
    prepared = []
    real = bench.prepare_for_inference
    monkeypatch.setattr(bench, "prepare_for_inference", lambda m: prepared.append(type(m).__name__) or real(m))
    results = bench.run_bench(_tiny_config(), iters=1, warmup=0, image_size=(96, 128), peer=True, fast=True)
    assert [r.mode for r in results] == ["inference", "inference"] and len(results) == 2
    assert prepared == ["TwoStageDetector", "MaskRCNN"]  # ours and torchvision's, the same preparation


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 1, bias=True)
        self.bn2 = nn.BatchNorm2d(4)
        self.downsample = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4))

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))) + self.downsample(x)


def test_fuse_conv_bn_folds_norms_and_keeps_outputs():
    torch.manual_seed(0)
    block = _Block()
    for bn in (block.bn1, block.bn2, block.downsample[1]):  # non-trivial statistics and affine
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-1, 1)
    block.eval()
    x = torch.randn(2, 3, 8, 8)
    fused = bench.fuse_conv_bn(block)
    assert isinstance(fused.bn1, nn.Identity) and isinstance(fused.bn2, nn.Identity)
    assert isinstance(fused.downsample[1], nn.Identity) and fused.conv1.bias is not None
    assert isinstance(block.bn1, nn.BatchNorm2d)  # the original is untouched
    # hand formulation of the fold for conv1: w * g / sqrt(v + eps), b = beta - mean * g / sqrt(v + eps)
    s = block.bn1.weight / torch.sqrt(block.bn1.running_var + block.bn1.eps)
    torch.testing.assert_close(fused.conv1.weight, block.conv1.weight * s[:, None, None, None])
    torch.testing.assert_close(fused.conv1.bias, block.bn1.bias - block.bn1.running_mean * s)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), block(x), atol=1e-5, rtol=1e-5)


def test_fuse_conv_bn_on_a_tiny_detector_keeps_detections():
    pytest.importorskip("gcnet.models.roi")
    from gcnet.models.detector import TwoStageDetector

    cfg = _tiny_config()
    torch.manual_seed(0)
    model = TwoStageDetector(cfg.model, cfg.class_names).eval()
    for m in model.backbone.modules():  # running statistics as a trained model would have
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 2)
            m.running_mean.uniform_(-0.5, 0.5)
    images, metas = bench.synthetic_input((96, 128), cfg.data)
    fused = bench.fuse_conv_bn(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.backbone.modules())
    with torch.no_grad():
        ref, out = model(images, metas)[0], fused(images, metas)[0]
    assert torch.equal(ref.labels, out.labels)
    torch.testing.assert_close(out.boxes, ref.boxes, atol=1e-3, rtol=0)
    torch.testing.assert_close(out.scores, ref.scores, atol=1e-4, rtol=0)


def test_prepare_for_inference_is_nhwc_and_equal():
    torch.manual_seed(1)
    block = _Block().eval()
    for bn in (block.bn1, block.bn2, block.downsample[1]):
        bn.running_var.uniform_(0.5, 2)
    fast = bench.prepare_for_inference(block)
    assert fast.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert isinstance(fast.bn1, nn.Identity) and isinstance(block.bn1, nn.BatchNorm2d)
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), block(x), atol=1e-5, rtol=1e-5)
