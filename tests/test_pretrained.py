"""load_imagenet_weights: torchvision and mmdet layouts, strictness, files and URLs (no network)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torchvision

from gcnet.checkpoint import CheckpointError, resolve_url
from gcnet.config import BackboneConfig
from gcnet.models.backbone import ResNet, load_imagenet_weights
from gcnet.models.backbone.pretrained import PretrainedLoadError

ALL_STAGES = (False, True, True, True)


@pytest.fixture(scope="module")
def r50_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    state = torchvision.models.resnet50(weights=None).state_dict()
    gen = torch.Generator().manual_seed(1)
    return {k: torch.randn(v.shape, generator=gen) if v.is_floating_point() else v for k, v in state.items()}


@pytest.fixture(scope="module")
def x50_state() -> dict[str, torch.Tensor]:
    """Same key scheme as the original's resnext101_32x4d file, at depth 50 to stay fast."""
    state = torchvision.models.resnext50_32x4d(weights=None).state_dict()
    gen = torch.Generator().manual_seed(2)
    return {k: torch.randn(v.shape, generator=gen) if v.is_floating_point() else v for k, v in state.items()}


def _assert_loaded(model: ResNet, state: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    for k, v in state.items():
        if not k.startswith("fc."):
            assert torch.equal(own[k], v), k


def test_torchvision_resnet50(r50_state: dict) -> None:
    model = ResNet(BackboneConfig())
    left = load_imagenet_weights(model, r50_state)
    assert left == []
    _assert_loaded(model, r50_state)


def test_resnext_with_gc_and_dcn_leaves_only_plugins(x50_state: dict) -> None:
    cfg = BackboneConfig(groups=32, base_width=4, gc_ratio=1 / 16, dcn_stages=ALL_STAGES)
    model = ResNet(cfg)
    gc_before = model.layer3[0].context_block.conv_mask.weight.clone()
    left = load_imagenet_weights(model, x50_state, layout="torchvision")
    _assert_loaded(model, x50_state)
    # 13 GC blocks x 8 entries + 13 DCN offset convs x 2 entries (layers 2-4 of a 50-layer net).
    assert len(left) == 13 * 8 + 13 * 2
    assert all(".context_block." in k or ".conv_offset." in k for k in left)
    assert torch.equal(model.layer3[0].context_block.conv_mask.weight, gc_before)  # kept its init


def test_mmdet_wrappings_and_old_files(r50_state: dict) -> None:
    no_counters = {k: v for k, v in r50_state.items() if not k.endswith("num_batches_tracked")}
    for wrapped in (
        {"state_dict": {f"module.{k}": v for k, v in r50_state.items()}, "meta": {"epoch": 100}},
        {f"backbone.{k}": v for k, v in r50_state.items()} | {"head.fc.weight": torch.zeros(2, 2)},
        no_counters,  # pre-0.4.1 files (torchvision's own ResNet files) have no num_batches_tracked
    ):
        model = ResNet(BackboneConfig())
        left = load_imagenet_weights(model, wrapped, layout="mmdet")
        _assert_loaded(model, no_counters)
        assert all(k.endswith("num_batches_tracked") for k in left)
    with pytest.raises(PretrainedLoadError, match="not tensors"):
        load_imagenet_weights(ResNet(BackboneConfig()), {"state_dict": r50_state}, layout="torchvision")


def test_errors_list_the_offending_keys(r50_state: dict, x50_state: dict) -> None:
    with pytest.raises(PretrainedLoadError, match=r"unexpected key\(s\): \['layer5.0.conv1.weight'\]"):
        load_imagenet_weights(ResNet(BackboneConfig()), r50_state | {"layer5.0.conv1.weight": torch.zeros(1)})
    partial = {k: v for k, v in r50_state.items() if k != "layer2.1.bn2.running_var"}
    with pytest.raises(PretrainedLoadError, match=r"missing key\(s\): \['layer2.1.bn2.running_var'\]"):
        load_imagenet_weights(ResNet(BackboneConfig()), partial)
    # ResNet-50 weights into ResNeXt-50: same keys, every conv1/conv2/conv3/bn1/bn2 shape differs.
    with pytest.raises(PretrainedLoadError, match="shape mismatch") as err:
        load_imagenet_weights(ResNet(BackboneConfig(groups=32, base_width=4)), r50_state)
    assert "layer1.0.conv2.weight: file (64, 64, 3, 3) vs model (128, 4, 3, 3)" in str(err.value)
    # ResNeXt-50 file into a 101-layer backbone: layer3.6..22 are missing.
    with pytest.raises(PretrainedLoadError, match="missing") as err:
        load_imagenet_weights(ResNet(BackboneConfig(depth=101, groups=32, base_width=4)), x50_state)
    assert "layer3.22.conv1.weight" in str(err.value)


def test_file_path(tmp_path: Path, r50_state: dict) -> None:
    path = tmp_path / "r50.pth"
    torch.save(r50_state, path)
    model = ResNet(BackboneConfig())
    load_imagenet_weights(model, path)
    _assert_loaded(model, r50_state)
    with pytest.raises(CheckpointError, match="absent.pth: checkpoint file not found"):
        load_imagenet_weights(model, tmp_path / "absent.pth")
    torch.save([torch.ones(1)], tmp_path / "list.pth")
    with pytest.raises(PretrainedLoadError, match="holds a list, not a dict"):
        load_imagenet_weights(model, tmp_path / "list.pth")
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_imagenet_weights(model, tmp_path / "text.pth")


def test_errors_are_checkpoint_errors() -> None:
    assert issubclass(PretrainedLoadError, CheckpointError)


def test_url_names() -> None:
    assert resolve_url("torchvision://resnet50").endswith("/resnet50-0676ba61.pth")
    assert resolve_url("torchvision://resnet101").endswith("/resnet101-63fe2227.pth")
    assert resolve_url("open-mmlab://resnext101_32x4d").endswith("/resnext101_32x4d-a5af3160.pth")
    for bad in ("torchvision://resnet7", "open-mmlab://nothing", "s3://bucket/x.pth"):
        with pytest.raises(CheckpointError, match="unknown checkpoint name"):
            load_imagenet_weights(ResNet(BackboneConfig()), bad)


def test_torchvision_scheme_reuses_torch_hub_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, r50_state: dict
) -> None:
    """torchvision's file already in torch hub's cache is read from there: no download."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setenv("GCNET_HOME", str(tmp_path / "home"))

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached file should have been used")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    cached = tmp_path / "hub" / "checkpoints" / "resnet50-0676ba61.pth"
    cached.parent.mkdir(parents=True)
    torch.save(r50_state, cached)
    model = ResNet(BackboneConfig())
    assert load_imagenet_weights(model, "torchvision://resnet50") == []
    _assert_loaded(model, r50_state)
    assert not (tmp_path / "home").exists()


def test_bad_layout(r50_state: dict) -> None:
    with pytest.raises(ValueError, match="layout"):
        load_imagenet_weights(ResNet(BackboneConfig()), r50_state, layout="caffe")  # type: ignore[arg-type]


def test_frozen_bn_backbone_loads(r50_state: dict) -> None:
    model = ResNet(replace(BackboneConfig(), norm="frozen_bn"))
    load_imagenet_weights(model, r50_state)
    _assert_loaded(model, r50_state)
