"""Checkpoint reading (safe unpickling, the original's layout), loading checks and atomic saving."""

from __future__ import annotations

import os
import pickle
import re
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from gcnet.checkpoint import (
    CheckpointError,
    backbone_structure,
    load_checkpoint,
    read_checkpoint,
    resolve_url,
    save_checkpoint,
)

# ------------------------------------------------------------------ helpers


def module_from_shapes(shapes: dict[str, tuple[int, ...]]) -> nn.Module:
    """A module tree whose state_dict has exactly these keys (all parameters, zero-filled)."""
    root = nn.Module()
    for key, shape in shapes.items():
        *path, leaf = key.split(".")
        node = root
        for part in path:
            if not hasattr(node, part):
                node.add_module(part, nn.Module())
            node = getattr(node, part)
        node.register_parameter(leaf, nn.Parameter(torch.zeros(shape)))
    return root


def fake_backbone(blocks=(3, 4, 6, 3), groups=1, dcn=False, gc_div=None, prefix="backbone.", width=2):
    """Key names/shapes of a bottleneck ResNet(-Xt) with tiny channel counts (width w, out 4w)."""
    shapes: dict[str, tuple[int, ...]] = {f"{prefix}conv1.weight": (2, 3, 7, 7)}
    w = width * groups
    cin = 2
    for s, n in enumerate(blocks, start=1):
        for b in range(n):
            p = f"{prefix}layer{s}.{b}."
            shapes[p + "conv1.weight"] = (w, cin, 1, 1)
            shapes[p + "conv2.weight"] = (w, w // groups, 3, 3)
            shapes[p + "conv3.weight"] = (4 * w, w, 1, 1)
            if dcn and s > 1:
                shapes[p + "conv2.conv_offset.weight"] = (18, w, 3, 3)
                shapes[p + "conv2.conv_offset.bias"] = (18,)
            if gc_div and s > 1:
                shapes[p + "context_block.channel_add_conv.0.weight"] = (4 * w // gc_div, 4 * w, 1, 1)
            cin = 4 * w
    return shapes


def _side_effect(path: str) -> None:
    Path(path).write_text("code ran")


class Evil:
    """An object whose unpickling would call `_side_effect` (what a hostile checkpoint can do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (_side_effect, (self.marker,))


class EvilShell:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def original_layout(state_dict: dict) -> dict:
    """What the original's publish script leaves in a .pth: state_dict (with _metadata) + meta."""
    sd = OrderedDict(state_dict)
    sd._metadata = OrderedDict([("", {"version": 1}), ("backbone", {"version": 1}), ("backbone.bn1", {"version": 2})])
    meta = {
        "mmdet_version": "2.0.0+8fc0542",
        "mmcv_version": "0.5.1",
        "config": "model = dict(\n    type='MaskRCNN',\n    pretrained='torchvision://resnet50')\n",
        "CLASSES": ("person", "bicycle", "car"),
        "epoch": 12,
        "iter": 87960,
        "time": "Tue Feb  4 13:05:02 2020",
        "env_info": "sys.platform: linux\nPython: 3.7.6",
        "seed": None,
        "hook_msgs": {"last_ckpt": "work_dirs/x/epoch_12.pth"},
    }
    return {"state_dict": sd, "meta": meta}


# ------------------------------------------------------------------ reading


def test_save_read_round_trip(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(2, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 4, 4)).sum().backward()
    opt.step()
    path = save_checkpoint(
        tmp_path / "ckpt.pth", model, meta={"epoch": 3, "classes": ("a", "b")}, optimizer=opt.state_dict(), iteration=7
    )
    sd, meta = read_checkpoint(path)
    assert meta == {"epoch": 3, "classes": ("a", "b")}
    assert list(sd) == list(model.state_dict())
    for k, v in model.state_dict().items():
        assert torch.equal(sd[k], v)
    raw = torch.load(path, weights_only=True)  # loadable without our allow-list too
    assert raw["iteration"] == 7 and raw["optimizer"]["param_groups"][0]["lr"] == 0.1
    fresh = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(2, 2))
    assert load_checkpoint(fresh, path) == meta
    for a, b in zip(fresh.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)


def test_weights_only_refuses_code_execution(tmp_path):
    marker, proof = tmp_path / "pwned", tmp_path / "proof"
    # the payload really works when unpickled the unsafe way
    pickle.loads(pickle.dumps(Evil(proof)))
    assert proof.read_text() == "code ran"
    for payload, name in ((Evil(marker), "_side_effect"), (EvilShell(marker), "system")):
        path = tmp_path / "evil.pth"
        torch.save({"state_dict": {"w": torch.ones(1)}, "meta": {"x": payload}}, path)
        with pytest.raises(CheckpointError) as info:
            read_checkpoint(path)
        message = str(info.value)
        assert str(path) in message and name in message and "weights_only=True" in message
        assert not marker.exists()


@pytest.mark.parametrize("mmap", [False, True], ids=["read", "mapped"])  # build maps, for a cheap config read
@pytest.mark.parametrize("zipfile", [True, False], ids=["zip", "legacy"])
def test_original_layout_loads(tmp_path, zipfile, mmap):
    weights = {
        "module.backbone.conv1.weight": torch.arange(6.0).reshape(1, 6),
        "module.backbone.layer2.0.conv2_offset.weight": torch.full((2, 2), 3.0),
        "module.backbone.layer2.0.conv2_offset.bias": torch.tensor([1.0, 2.0]),
        "module.backbone.bn1.num_batches_tracked": torch.tensor(5),
    }
    ckpt = original_layout(weights)
    path = tmp_path / "orig.pth"
    torch.save(ckpt, path, _use_new_zipfile_serialization=zipfile)
    sd, meta = read_checkpoint(path, mmap=mmap)
    assert meta == ckpt["meta"]
    # module. stripped; DCN keys as in the file (renamed on load, where the model says which are DCN)
    assert list(sd) == [
        "backbone.conv1.weight",
        "backbone.layer2.0.conv2_offset.weight",
        "backbone.layer2.0.conv2_offset.bias",
        "backbone.bn1.num_batches_tracked",
    ]
    assert torch.equal(sd["backbone.layer2.0.conv2_offset.bias"], torch.tensor([1.0, 2.0]))
    assert sd["backbone.bn1.num_batches_tracked"].dtype == torch.int64


def test_numpy_metadata_under_old_and_new_module_names(tmp_path):
    ckpt = {
        "state_dict": {"w": torch.ones(2)},
        "meta": {"best": np.float64(0.397), "ids": np.arange(3, dtype=np.int32), "dt": np.dtype("f4")},
    }
    path = tmp_path / "np.pth"
    torch.save(ckpt, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    assert b"numpy._core.multiarray" in data  # numpy 2 writes the new module name
    old = tmp_path / "np_old.pth"  # numpy 1 (the original's era) wrote numpy.core.multiarray
    old.write_bytes(data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    for p in (path, old):
        _, meta = read_checkpoint(p)
        assert meta["best"] == 0.397 and meta["ids"].tolist() == [0, 1, 2] and meta["dt"] == np.float32


def test_bare_state_dict_and_bad_files(tmp_path):
    torch.save(OrderedDict(a=torch.ones(1)), tmp_path / "bare.pth")
    sd, meta = read_checkpoint(tmp_path / "bare.pth")
    assert list(sd) == ["a"] and meta == {}
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth: not a PyTorch checkpoint .*neither a zip nor a pickle"):
        read_checkpoint(tmp_path / "junk.pth")
    (tmp_path / "bad.pth").write_bytes(b"\x80\x02garbage")  # looks like a pickle, is not one
    with pytest.raises(CheckpointError, match="bad.pth: not a readable PyTorch checkpoint") as err:
        read_checkpoint(tmp_path / "bad.pth")
    assert "weights_only=False" not in str(err.value)  # torch's advice to load unsafely is not passed on
    torch.save({"epoch": 1}, tmp_path / "noweights.pth")
    with pytest.raises(CheckpointError, match="no weights"):
        read_checkpoint(tmp_path / "noweights.pth")


# ------------------------------------------------------------------ loading


def test_strict_mismatch_lists_keys_and_file(tmp_path):
    model = module_from_shapes({"a.weight": (2,), "b.weight": (3,)})
    path = tmp_path / "other.pth"
    torch.save({"state_dict": {"a.weight": torch.ones(2), "c.weight": torch.ones(1)}}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(model, path)
    message = str(info.value)
    assert "other.pth" in message
    assert re.search(r"missing keys.*\(1\):\s+b\.weight", message)
    assert re.search(r"unexpected keys.*\(1\):\s+c\.weight", message)
    assert torch.equal(model.a.weight, torch.zeros(2))  # nothing loaded on failure
    with pytest.warns(UserWarning, match="non-strictly"):
        load_checkpoint(model, path, strict=False)
    assert torch.equal(model.a.weight, torch.ones(2)) and torch.equal(model.b.weight, torch.zeros(3))


def test_shape_mismatch_raises_even_non_strict(tmp_path):
    model = module_from_shapes({"a.weight": (2,)})
    path = tmp_path / "s.pth"
    torch.save({"a.weight": torch.ones(5)}, path)
    with pytest.raises(CheckpointError, match=r"a\.weight: checkpoint \(5,\) vs model \(2,\)"):
        load_checkpoint(model, path, strict=False)


def test_module_prefix_and_legacy_dcn_keys_load(tmp_path):
    model = module_from_shapes(
        {
            "backbone.layer2.0.conv2.weight": (2, 2, 3, 3),
            "backbone.layer2.0.conv2.conv_offset.weight": (18, 2, 3, 3),
            "backbone.layer2.0.conv2.conv_offset.bias": (18,),
        }
    )
    values = {
        "module.backbone.layer2.0.conv2.weight": torch.full((2, 2, 3, 3), 1.0),
        "module.backbone.layer2.0.conv2_offset.weight": torch.full((18, 2, 3, 3), 2.0),
        "module.backbone.layer2.0.conv2_offset.bias": torch.arange(18.0),
    }
    path = tmp_path / "legacy.pth"
    torch.save(original_layout(values), path, _use_new_zipfile_serialization=False)
    meta = load_checkpoint(model, path)
    assert meta["epoch"] == 12
    conv2 = (
        model.backbone.layer2[0].conv2
        if isinstance(model.backbone.layer2, nn.Sequential)
        else getattr(model.backbone.layer2, "0").conv2
    )
    assert torch.equal(conv2.weight, torch.ones(2, 2, 3, 3))
    assert torch.equal(conv2.conv_offset.weight, torch.full((18, 2, 3, 3), 2.0))
    assert torch.equal(conv2.conv_offset.bias, torch.arange(18.0))


def test_wrapped_model_is_unwrapped(tmp_path):
    inner = nn.Linear(2, 2)
    path = save_checkpoint(tmp_path / "w.pth", nn.DataParallel(inner))
    assert list(read_checkpoint(path)[0]) == ["weight", "bias"]  # no module. prefix written
    target = nn.DataParallel(nn.Linear(2, 2))
    load_checkpoint(target, path)
    assert torch.equal(target.module.weight, inner.weight)


def _save_shapes(path: Path, shapes: dict) -> Path:
    torch.save({"state_dict": _tensors(shapes), "meta": {}}, path)
    return path


def _tensors(shapes: dict) -> dict:
    return {k: torch.zeros(s) for k, s in shapes.items()}


def test_backbone_structure_reads_blocks_groups_dcn_gc():
    s = backbone_structure(_tensors(fake_backbone((3, 4, 23, 3), groups=32, dcn=True, gc_div=16)))
    assert s.blocks == (3, 4, 23, 3) and s.groups == 32 and s.bottleneck
    assert s.dcn == (False, True, True, True)
    assert s.describe() == "ResNeXt-101 32x2d with DCN in c3,c4,c5 with GC r16 in c3,c4,c5"
    assert backbone_structure(_tensors(fake_backbone(prefix=""))).describe() == "ResNet-50"
    assert backbone_structure({"neck.x.weight": torch.zeros(1)}) is None


def test_backbone_mismatch_message_r50_vs_x101(tmp_path):
    path = _save_shapes(tmp_path / "r50.pth", fake_backbone((3, 4, 6, 3)))
    model = module_from_shapes(fake_backbone((3, 4, 23, 3), groups=32))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(model, path, strict=False)
    message = str(info.value)
    assert "r50.pth: checkpoint has a ResNet-50 backbone (3,4,6,3 blocks)" in message
    assert "config builds a ResNeXt-101 32x2d backbone (3,4,23,3 blocks)" in message


@pytest.mark.parametrize(
    "ckpt_kw, model_kw, words",
    [
        (dict(), dict(dcn=True), ("ResNet-50 backbone", "ResNet-50 with DCN in c3,c4,c5")),
        (dict(gc_div=4, width=4), dict(gc_div=16, width=4), ("GC r4", "GC r16")),
    ],
)
def test_backbone_mismatch_dcn_and_gc(tmp_path, ckpt_kw, model_kw, words):
    path = _save_shapes(tmp_path / "c.pth", fake_backbone(**ckpt_kw))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(module_from_shapes(fake_backbone(**model_kw)), path)
    message = str(info.value)
    assert message.index(words[0]) < message.index("but the config builds") < message.index(words[1])


def test_real_backbone_mismatch(tmp_path):
    backbone_mod = pytest.importorskip("gcnet.models.backbone")
    if not hasattr(backbone_mod, "ResNet"):
        pytest.skip("gcnet.models.backbone.ResNet not written yet")
    from gcnet.config import BackboneConfig

    r50 = backbone_mod.ResNet(BackboneConfig(depth=50, pretrained=None))
    path = save_checkpoint(tmp_path / "r50.pth", {f"backbone.{k}": v for k, v in r50.state_dict().items()})
    holder = nn.Module()
    with torch.device("meta"):
        holder.backbone = backbone_mod.ResNet(BackboneConfig(depth=101, groups=32, base_width=4, pretrained=None))
    with pytest.raises(
        CheckpointError,
        match=r"ResNet-50 backbone \(3,4,6,3 blocks\) but the config builds "
        r"a ResNeXt-101 32x4d backbone \(3,4,23,3 blocks\)",
    ):
        load_checkpoint(holder, path)


# ------------------------------------------------------------------ saving


def test_atomic_save_keeps_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "latest.pth", {"w": torch.ones(3)}, meta={"epoch": 1})
    before = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"w": torch.zeros(3)}, meta={"epoch": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert read_checkpoint(path)[1] == {"epoch": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pth"]  # no temp file left


def test_tensors_in_extra_are_saved_as_detached_cpu_copies(tmp_path):
    """Optimizer momentum lives on the training device; the file must open anywhere (plain torch.load)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    buf = torch.ones(3, device=device, requires_grad=True)
    state = OrderedDict(step=torch.tensor(4.0, device=device), nested=[{"buf": buf}, (buf, 1)])
    path = save_checkpoint(tmp_path / "c.pth", nn.Linear(2, 2).to(device), optimizer={"state": state})
    raw = torch.load(path, map_location=None, weights_only=True)
    saved = raw["optimizer"]["state"]
    assert type(saved) is OrderedDict and isinstance(saved["nested"][1], tuple) and saved["nested"][1][1] == 1
    for t in (saved["step"], saved["nested"][0]["buf"], saved["nested"][1][0], raw["state_dict"]["weight"]):
        assert t.device.type == "cpu" and not t.requires_grad
    assert torch.equal(saved["nested"][0]["buf"], torch.ones(3))


def test_save_refuses_what_weights_only_cannot_read(tmp_path):
    with pytest.raises(TypeError, match=r"meta\['score'\] is a numpy"):
        save_checkpoint(tmp_path / "x.pth", {"w": torch.ones(1)}, meta={"score": np.float64(1.0)})
    with pytest.raises(TypeError, match=r"extra\['hook'\]"):
        save_checkpoint(tmp_path / "x.pth", {"w": torch.ones(1)}, hook=Evil(tmp_path / "m"))
    with pytest.raises(TypeError, match="state_dict"):
        save_checkpoint(tmp_path / "x.pth", {"w": torch.ones(1)}, state_dict={})
    assert not (tmp_path / "x.pth").exists() and not (tmp_path / "m").exists()


def test_resolve_url():
    assert resolve_url("torchvision://resnet50") == "https://download.pytorch.org/models/resnet50-0676ba61.pth"
    assert resolve_url("torchvision://resnet101") == "https://download.pytorch.org/models/resnet101-63fe2227.pth"
    assert (
        resolve_url("open-mmlab://resnext101_32x4d")
        == "https://download.openmmlab.com/pretrain/third_party/resnext101_32x4d-a5af3160.pth"
    )
    assert resolve_url("https://example.org/a-12345678.pth") == "https://example.org/a-12345678.pth"
    # Zoo config names are the builder's to resolve (core knows no zoo); more in test_download.py.
    for name in ("torchvision://resnet7", "mask-rcnn_r50-gcb-r4-c3-c5_fpn_1x_coco"):
        with pytest.raises(CheckpointError, match="unknown checkpoint name"):
            resolve_url(name)


# ------------------------------------------------------------------ shared helpers


def test_atomic_write_and_copy(tmp_path):
    from gcnet.checkpoint import atomic_copy, atomic_write

    target = atomic_write(tmp_path / "sub" / "a.bin", lambda f: f.write(b"first"))
    assert target.read_bytes() == b"first" and oct(target.stat().st_mode & 0o777) == "0o644"

    def fails(f):
        f.write(b"half")
        raise KeyboardInterrupt  # even an interrupt leaves no temp file and the old content

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, fails)
    assert target.read_bytes() == b"first" and [p.name for p in target.parent.iterdir()] == ["a.bin"]
    copy = atomic_copy(target, tmp_path / "b.bin")
    assert copy.read_bytes() == b"first"


def test_unwrap_model_peels_nested_wrappers():
    from gcnet.checkpoint import unwrap_model
    from gcnet.engine import unwrap

    inner = nn.Linear(2, 2)

    class Compiled(nn.Module):  # what torch.compile's OptimizedModule looks like from outside
        def __init__(self, mod: nn.Module) -> None:
            super().__init__()
            self._orig_mod = mod

    wrapped = nn.DataParallel(Compiled(nn.DataParallel(inner)))
    assert unwrap_model(wrapped) is inner and unwrap_model(inner) is inner
    assert unwrap is unwrap_model  # the trainer and the checkpoint code peel the same way
    assert list(unwrap_model(wrapped).state_dict()) == ["weight", "bias"]


def test_sha256_prefix_in_name():
    from gcnet.checkpoint import sha256_prefix_in_name

    assert sha256_prefix_in_name("mask_rcnn_r50_fpn_1x_coco_20200204-17235656.pth") == "17235656"
    assert sha256_prefix_in_name("resnet50-0676ba61.pth") == "0676ba61"
    assert sha256_prefix_in_name("x-" + "ab" * 32 + ".pt") == "ab" * 32
    assert sha256_prefix_in_name("epoch_12.pth") is None
    assert sha256_prefix_in_name("x-1234567.pth") is None  # 7 digits: not a hash
    assert sha256_prefix_in_name("x-1234567G.pth") is None


def test_trainer_checkpointer_uses_the_one_writer(tmp_path):
    from gcnet.engine import Checkpointer

    ckpt = Checkpointer(tmp_path / "work")
    model = nn.DataParallel(nn.Linear(2, 1))
    extra = {"optimizer": {}, "scheduler": {}, "rng": [], "epoch": 1, "iter": 0}
    path = ckpt.save(model, {"epoch": 1}, extra, epoch_file=1)
    assert path.name == "epoch_1.pth" and ckpt.latest.read_bytes() == path.read_bytes()
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["epoch_1.pth", "latest.pth"]
    loaded = ckpt.load()
    assert list(loaded["state_dict"]) == ["weight", "bias"] and loaded["epoch"] == 1
    with pytest.raises(TypeError, match=r"extra\['rng'\]"):  # refused before anything is written
        ckpt.save(model, {}, {**extra, "rng": [np.float64(1.0)]})
    ckpt.latest.write_bytes(path.read_bytes()[:100])  # a truncated file names itself
    with pytest.raises(CheckpointError, match="latest.pth: not a readable"):
        ckpt.load()
