"""The training loop on a tiny stand-in detector (fast) and on the real tiny detector + shapes data.

The stand-ins follow the detector contract: ``model(images, metas, targets) -> dict of losses``
and a dataset of ``(image, ImageMeta, Targets)``; other test files import them from here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from gcnet.config import Config, DataConfig, TrainConfig
from gcnet.data import GroupedBatchSampler, collate
from gcnet.engine import NonFiniteLossError, Trainer, lr_at, seed_everything, sum_losses
from gcnet.structures import ImageMeta, Targets

torch.set_num_threads(1)


# ------------------------------------------------------------------ stand-ins


class TinyDetector(nn.Module):
    """Conv -> (BN) -> pool -> linear; regresses the mean GT box. Dropout draws from the global
    RNG like the real RoI sampler does, so resume tests see RNG restore matter."""

    def __init__(self, dropout: float = 0.0, norm: bool = True, nan_at_call: int | None = None):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4) if norm else nn.Identity(), nn.ReLU()
        )
        self.head = nn.Linear(4, 4)
        self.drop = nn.Dropout(dropout)
        self.class_names = ("a", "b")
        self.nan_at_call = nan_at_call
        self.calls = 0
        self.seen_dtypes: list[torch.dtype] = []

    def forward(self, images: Tensor, metas: list[ImageMeta], targets: list[Targets]) -> dict[str, Tensor]:
        self.calls += 1
        feats = self.backbone(images)
        pooled = feats.mean((2, 3))
        pred = self.head(self.drop(pooled))
        self.seen_dtypes.append(pred.dtype)
        goal = torch.stack([t.boxes.mean(0) for t in targets]) / 32.0
        loss_reg = ((pred.float() - goal) ** 2).mean()
        if self.nan_at_call is not None and self.calls == self.nan_at_call:
            loss_reg = loss_reg * float("nan")
        return {"loss_reg": loss_reg, "loss_aux": 0.1 * pooled.float().pow(2).mean(), "acc": torch.tensor(0.5)}


class TinyDataset(Dataset):
    """``n`` 32x32 images with one box each; flips with torch's global RNG like CocoDetection."""

    def __init__(self, n: int = 8, flip_prob: float = 0.0) -> None:
        self.n, self.flip_prob = n, flip_prob
        self.aspect_ratio_flags = [1] * n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[Tensor, ImageMeta, Targets]:
        g = torch.Generator().manual_seed(i)
        image = torch.randn(3, 32, 32, generator=g)
        box = torch.tensor([[2.0 + i, 3.0, 12.0 + 2 * i, 20.0]])
        flip = bool(torch.rand(()) < self.flip_prob)
        if flip:
            image = image.flip(-1)
            box = torch.stack([32 - box[:, 2], box[:, 1], 32 - box[:, 0], box[:, 3]], dim=1)
        meta = ImageMeta(img_shape=(32, 32), ori_shape=(32, 32), scale_factor=(1.0, 1.0), flip=flip)
        return image, meta, Targets(box, torch.tensor([i % 2]))


def tiny_config(**train: object) -> Config:
    base = dict(
        lr=0.04, warmup_iters=3, warmup_ratio=0.1, milestones=(1,), epochs=2, log_interval=1, base_batch_size=16
    )
    base.update(train)
    images = int(base.pop("images_per_gpu", 2))  # type: ignore[call-overload]
    return Config(train=TrainConfig(**base), data=DataConfig(images_per_gpu=images, workers_per_gpu=0))  # type: ignore[arg-type]


def make_trainer(
    cfg: Config,
    work_dir: Path,
    model: nn.Module | None = None,
    n: int = 8,
    flip_prob: float = 0.0,
    num_replicas: int = 1,
    rank: int = 0,
    **kw: object,
) -> Trainer:
    data = TinyDataset(n, flip_prob)
    sampler = GroupedBatchSampler(
        data.aspect_ratio_flags,
        cfg.data.images_per_gpu,
        shuffle=True,
        seed=cfg.train.seed,
        num_replicas=num_replicas,
        rank=rank,
    )
    return Trainer(
        model if model is not None else TinyDetector(),
        data,
        sampler,
        cfg,
        work_dir,
        collate_fn=collate,
        device="cpu",
        progress=False,
        **kw,
    )  # type: ignore[arg-type]


def read_log(work_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (work_dir / "log.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------ tests


def test_sum_losses_only_adds_loss_terms() -> None:
    losses = {"loss_a": torch.tensor(1.5), "s1.loss_b": torch.tensor(2.0), "acc": torch.tensor(9.0)}
    assert sum_losses(losses).item() == pytest.approx(3.5)
    with pytest.raises(ValueError, match="no loss terms"):
        sum_losses({"acc": torch.tensor(1.0)})


def test_two_steps_match_hand_written_sgd(tmp_path: Path) -> None:
    """The trainer's updates equal an explicit re-derivation: lr from the formula, batches from the
    sampler order, SGD momentum 0.9 / wd 1e-4 written out by hand."""
    cfg = tiny_config(epochs=1)
    torch.manual_seed(0)
    model = TinyDetector(norm=False)
    ref = TinyDetector(norm=False)
    ref.load_state_dict(model.state_dict())
    trainer = make_trainer(cfg, tmp_path, model, n=4)
    trainer.fit()

    data = TinyDataset(4)
    order = list(GroupedBatchSampler(data.aspect_ratio_flags, 2, seed=0))
    base_lr = 0.04 * 2 / 16
    bufs: dict[str, Tensor] = {}
    for step, idx in enumerate(order):
        batch = collate([data[i] for i in idx])
        loss = sum_losses(ref(batch.images, batch.metas, batch.targets))
        grads = torch.autograd.grad(loss, list(ref.parameters()))
        lr = base_lr * (0.1 + 0.9 * step / 3)  # warm-up over 3 steps from 0.1
        with torch.no_grad():
            for (name, p), g in zip(ref.named_parameters(), grads):
                d = g + 1e-4 * p
                bufs[name] = d if step == 0 else 0.9 * bufs[name] + d
                p -= lr * bufs[name]
    for (name, p), q in zip(ref.named_parameters(), model.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-7, msg=name)
    log = read_log(tmp_path)
    assert [r["lr"] for r in log] == pytest.approx([base_lr * 0.1, base_lr * 0.4])


def test_grad_accum_equals_one_big_batch(tmp_path: Path) -> None:
    """2 micro-batches of 1 image with accumulation = 1 batch of 2 (same lr: total batch 2)."""
    params = []
    for images, accum in ((1, 2), (2, 1)):
        torch.manual_seed(0)
        model = TinyDetector(norm=False)
        cfg = tiny_config(images_per_gpu=images, grad_accum=accum, epochs=2)
        trainer = make_trainer(cfg, tmp_path / f"{images}x{accum}", model, n=6)
        assert trainer.iters_per_epoch == 3
        trainer.fit()
        params.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*params):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_log_records_and_epoch_checkpoints(tmp_path: Path) -> None:
    cfg = tiny_config(epochs=2, checkpoint_interval=2)
    final = make_trainer(cfg, tmp_path).fit()
    assert final == tmp_path / "epoch_2.pth"
    assert final.is_file() and (tmp_path / "latest.pth").is_file()
    assert not (tmp_path / "epoch_1.pth").exists()  # checkpoint_interval 2
    log = read_log(tmp_path)
    assert [(r["epoch"], r["iter"]) for r in log] == [(1, 1), (1, 2), (1, 3), (1, 4), (2, 1), (2, 2), (2, 3), (2, 4)]
    for r in log:
        expected = lr_at(cfg.train, 0.04 * 2 / 16, r["epoch"] - 1, r["iter"] - 1, 4)
        assert r["lr"] == pytest.approx(expected)
        assert r["loss"] == pytest.approx(r["loss_reg"] + r["loss_aux"], rel=1e-6)
        assert {"time", "data_time", "acc", "global_step"} <= set(r)
    ckpt = torch.load(final, weights_only=True)
    assert (ckpt["epoch"], ckpt["iter"], ckpt["global_step"]) == (2, 0, 8)
    assert set(ckpt["state_dict"]) == set(TinyDetector().state_dict())
    assert ckpt["meta"]["class_names"] == ["a", "b"]


def test_log_interval_thins_the_json_log(tmp_path: Path) -> None:
    make_trainer(tiny_config(epochs=2, log_interval=3), tmp_path).fit()  # 8 steps
    assert [r["global_step"] for r in read_log(tmp_path)] == [3, 6]


def test_non_finite_loss_stops_without_overwriting_checkpoint(tmp_path: Path) -> None:
    cfg = tiny_config(epochs=1, checkpoint_every_iters=1)
    trainer = make_trainer(cfg, tmp_path, TinyDetector(nan_at_call=3))
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, iteration 3 .*loss_reg"):
        trainer.fit()
    ckpt = torch.load(tmp_path / "latest.pth", weights_only=True)
    assert ckpt["global_step"] == 2  # the last good one


def test_grad_clip_bounds_the_first_update(tmp_path: Path) -> None:
    cfg = tiny_config(epochs=1, grad_clip=1e-3, warmup_iters=0)
    torch.manual_seed(0)
    model = TinyDetector(norm=False)
    before = [p.detach().clone() for p in model.parameters()]
    trainer = make_trainer(cfg, tmp_path, model, n=2)
    trainer.fit()
    lr = 0.04 * 2 / 16
    change = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)]).norm()
    weights = torch.cat([b.flatten() for b in before]).norm()
    assert change <= lr * (1e-3 + 1e-4 * weights) * (1 + 1e-5)
    assert read_log(tmp_path)[0]["grad_norm"] > 1e-3  # it was actually clipped


def test_bf16_autocast(tmp_path: Path) -> None:
    model = TinyDetector()
    make_trainer(tiny_config(epochs=1, amp="bf16"), tmp_path, model, n=2).fit()
    assert model.seen_dtypes == [torch.bfloat16]
    assert math.isfinite(read_log(tmp_path)[0]["loss"])


def test_fp16_uses_grad_scaler(tmp_path: Path) -> None:
    model = TinyDetector()
    trainer = make_trainer(tiny_config(epochs=1, amp="fp16"), tmp_path, model, n=2)
    assert trainer.scaler.is_enabled()
    trainer.fit()
    assert model.seen_dtypes == [torch.float16]
    ckpt = torch.load(tmp_path / "latest.pth", weights_only=True)
    assert ckpt["grad_scaler"]["scale"] == 65536.0  # one good step: not yet grown or backed off


def test_bad_amp_value_is_named(tmp_path: Path) -> None:
    cfg = tiny_config()
    with pytest.raises(ValueError, match="amp"):  # refused by the config, before any trainer exists
        dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, amp="fp8"))  # type: ignore[arg-type]


def test_sigterm_saves_at_boundary_and_resume_is_exact(tmp_path: Path) -> None:
    """SIGTERM mid-epoch -> latest.pth at that iteration, clean return; resuming gives the
    uninterrupted run's losses (dropout + random flips make the RNG restore matter)."""
    cfg = tiny_config(epochs=2)

    def run(work: Path, callback: object = None, resume: bool = False) -> Path:
        seed_everything(0)
        model = TinyDetector(dropout=0.5)
        return make_trainer(cfg, work, model, flip_prob=0.5, step_callback=callback).fit(resume=resume)

    run(tmp_path / "full")

    def send_sigterm(trainer: Trainer, record: dict) -> None:
        if record["global_step"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    handler_before = signal.getsignal(signal.SIGTERM)
    stopped = run(tmp_path / "cut", send_sigterm)
    assert signal.getsignal(signal.SIGTERM) is handler_before  # the trainer's handler is removed
    assert stopped == tmp_path / "cut" / "latest.pth"
    ckpt = torch.load(stopped, weights_only=True)
    assert (ckpt["epoch"], ckpt["iter"], ckpt["global_step"]) == (0, 3, 3)
    assert len(read_log(tmp_path / "cut")) == 3
    run(tmp_path / "cut", resume=True)
    full, cut = read_log(tmp_path / "full"), read_log(tmp_path / "cut")
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("time", "data_time")} for r in rs]  # noqa: E731
    assert strip(cut) == strip(full)


def test_train_real_tiny_detector(tmp_path: Path) -> None:
    """``gcnet.engine.train`` end to end: shapes data, tiny GC ResNet-18 Mask R-CNN, 1 epoch."""
    pytest.importorskip("gcnet.models.detector")
    from gcnet.checkpoint import load_checkpoint
    from gcnet.engine import train
    from gcnet.models.detector import build_model

    cfg = real_tiny_config(tmp_path / "data", epochs=1)
    seen: list[int] = []
    final = train(cfg, tmp_path / "work", device="cpu", evaluate_fn=lambda m, e: seen.append(e))
    assert final == tmp_path / "work" / "epoch_1.pth" and seen == [1]
    log = read_log(tmp_path / "work")
    assert len(log) == 2 and all(math.isfinite(r["loss"]) for r in log)
    assert {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox", "loss_mask"} <= set(log[0])
    fresh = build_model(cfg.model, cfg.class_names)
    load_checkpoint(fresh, final)  # strict: the model's own key names, no "module."


def real_tiny_config(
    data_root: Path, num_train: int = 4, workers: int = 0, dcn: bool = False, **train: object
) -> Config:
    """A tiny GC ResNet-18 Mask R-CNN on synthetic 64x64 shapes images (shared with test_resume);
    ``dcn``: a ResNet-50 layout with deformable conv2 in c3-c5, as the zoo's dconv rows."""
    from gcnet.config import BackboneConfig, FPNConfig, ModelConfig, RoIConfig, RPNConfig
    from gcnet.data import SHAPE_CLASSES, make_synthetic_coco

    paths = make_synthetic_coco(
        data_root, num_train=num_train, num_val=0, image_size=(64, 64), object_size=(12, 30), max_objects=2
    )
    expansion = 4 if dcn else 1
    model = ModelConfig(
        backbone=BackboneConfig(
            depth=50 if dcn else 18,
            base_channels=8,
            pretrained=None,
            gc_ratio=0.25,
            norm="syncbn",
            norm_eval=False,
            dcn_stages=(False, True, True, True) if dcn else (False,) * 4,
        ),
        neck=FPNConfig(in_channels=tuple(expansion * c for c in (8, 16, 32, 64)), out_channels=16),
        rpn=RPNConfig(in_channels=16, feat_channels=16, train_nms_pre=200, train_max_per_img=100, num_samples=64),
        roi=RoIConfig(num_classes=len(SHAPE_CLASSES), in_channels=16, fc_channels=32, num_samples=32),
    )
    data = DataConfig(
        scale=(64, 64),
        images_per_gpu=2,
        workers_per_gpu=workers,
        train_ann=paths["train_ann"],
        train_images=paths["train_images"],
    )
    base = dict(lr=0.02, warmup_iters=2, log_interval=1)
    base.update(train)
    return Config(
        name="tiny",
        model=model,
        data=data,
        train=TrainConfig(**base),  # type: ignore[arg-type]
        class_names=tuple(SHAPE_CLASSES),
    )
