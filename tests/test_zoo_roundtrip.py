"""Every zoo config through save -> load -> predict: Python and the CLI, the DCN rows included.

The published files cannot be downloaded here, so each config's own full-size model stands in for
its checkpoint: written with ``save_checkpoint`` (the layout we write) and, for the DCN rows, also
re-keyed to mmcv's legacy ``conv2_offset`` layout. Loading is strict, and the loaded state dict must
equal the saved one tensor for tensor.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import gcnet
from gcnet.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from gcnet.checkpoint.io import upgrade_legacy_dcn_keys
from gcnet.cli import main
from gcnet.config import COCO_CLASSES
from gcnet.zoo import ZOO

SMALL = ["--set", "data.scale=(64,64)"]  # the zoo's test pipeline would upscale to 800 px


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """One 64x48 image and a COCO json with the 80 COCO categories (the zoo models' classes)."""
    root = tmp_path_factory.mktemp("coco")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(image).save(root / "000001.png")
    ann = {
        "images": [{"id": 1, "file_name": "000001.png", "width": 64, "height": 48}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "bbox": [10, 8, 30, 20],
                "area": 600,
                "iscrowd": 0,
                "segmentation": [[10, 8, 40, 8, 40, 28, 10, 28]],
            }
        ],
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(COCO_CLASSES)],
    }
    (root / "ann.json").write_text(json.dumps(ann))
    return root / "ann.json", root, root / "000001.png"


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_config_checkpoint_round_trip(name: str, tmp_path: Path, tiny_coco, capsys) -> None:
    torch.manual_seed(0)
    model = gcnet.build_detector(name)
    path = save_checkpoint(tmp_path / "ckpt.pth", model)

    fresh = gcnet.build_model(ZOO[name].config.model, ZOO[name].config.class_names)
    load_checkpoint(fresh, path)  # strict
    _same_state(model, fresh)
    _same_state(model, gcnet.build_detector(name, checkpoint=str(path)))

    ann, images, image = tiny_coco
    out = tmp_path / "pred"
    assert main(["predict", name, str(image), "--checkpoint", str(path), "--out", str(out), *SMALL]) == 0
    assert (out / "detections.json").is_file() and (out / "000001.png").is_file()
    assert main(["test", name, "--checkpoint", str(path), "--data", str(ann), "--images", str(images), *SMALL]) == 0
    assert "error" not in capsys.readouterr().err
    path.unlink()  # a full-size file per row (19 rows, ~5 GB): pytest keeps its last runs' temp dirs


DCN_NAMES = [n for n in ZOO if ZOO[n].config.model.backbone.dcn_stages != (False,) * 4]


def test_three_dcn_rows() -> None:
    assert len(DCN_NAMES) == 3 and all("dconv" in n for n in DCN_NAMES)


@pytest.mark.slow
def test_dcn_checkpoint_in_mmcv_legacy_layout_loads(tmp_path: Path) -> None:
    """Offsets saved as ``...conv2_offset.*`` (DeformConv2dPack state version < 2) load into the
    current ``...conv2.conv_offset.*`` parameters, with a ``module.`` prefix as old files have."""
    name = DCN_NAMES[1]
    torch.manual_seed(1)
    model = gcnet.build_detector(name)
    legacy = {}
    for key, value in model.state_dict().items():
        legacy["module." + key.replace(".conv2.conv_offset.", ".conv2_offset.")] = value
    assert sum(".conv2_offset." in k for k in legacy) == 2 * sum(
        isinstance(m, torch.nn.Conv2d) and n.endswith("conv_offset") for n, m in model.named_modules()
    )
    path = tmp_path / "legacy.pth"
    torch.save({"state_dict": legacy, "meta": {"epoch": 12}}, path)
    _same_state(model, gcnet.build_detector(name, checkpoint=str(path)))


def test_legacy_rename_touches_only_old_keys_where_the_current_key_is_absent() -> None:
    model_keys = [
        "b.layer2.0.conv2.weight",
        "b.layer2.0.conv2.conv_offset.weight",
        "b.layer2.0.conv2.conv_offset.bias",
        "b.layer3.0.conv2.conv_offset.weight",
    ]
    one, two, three = torch.ones(1), torch.full((1,), 2.0), torch.full((1,), 3.0)
    current = {
        "b.layer2.0.conv2.weight": one,
        "b.layer2.0.conv2.conv_offset.weight": two,
        "b.layer2.0.conv2.conv_offset.bias": three,
    }
    assert upgrade_legacy_dcn_keys(current, model_keys) == current  # current layout: untouched
    old = {"b.layer2.0.conv2.weight": one, "b.layer2.0.conv2_offset.weight": two, "b.layer2.0.conv2_offset.bias": three}
    assert list(upgrade_legacy_dcn_keys(old, model_keys)) == list(current)  # renamed in place, order kept
    both = {**current, "b.layer2.0.conv2_offset.weight": one}  # current wins; the old key stays (unexpected)
    upgraded = upgrade_legacy_dcn_keys(both, model_keys)
    assert upgraded["b.layer2.0.conv2.conv_offset.weight"] is two and "b.layer2.0.conv2_offset.weight" in upgraded
    # an old-looking key of a module that is not deformable in the model is not renamed
    stray = {"b.layer4.0.conv2_offset.weight": one}
    assert list(upgrade_legacy_dcn_keys(stray, model_keys)) == ["b.layer4.0.conv2_offset.weight"]


@pytest.mark.parametrize("prefix", ["", "module."])
@pytest.mark.parametrize("wrapper", ["state_dict", "model", None])
def test_every_load_transformation_on_current_and_old_layout(tmp_path: Path, prefix: str, wrapper) -> None:
    """``module.`` stripping and the ``state_dict`` / ``model`` / bare wrappers, each with current
    and legacy DCN keys: the same weights arrive."""
    from test_checkpoint import module_from_shapes

    shapes = {
        "backbone.layer2.0.conv2.weight": (2, 2, 3, 3),
        "backbone.layer2.0.conv2.conv_offset.weight": (18, 2, 3, 3),
        "backbone.layer2.0.conv2.conv_offset.bias": (18,),
    }
    values = {k: torch.full(s, float(i + 1)) for i, (k, s) in enumerate(shapes.items())}
    for legacy in (False, True):
        weights = {
            prefix + (k.replace(".conv2.conv_offset.", ".conv2_offset.") if legacy else k): v for k, v in values.items()
        }
        path = tmp_path / f"w{int(legacy)}.pth"
        torch.save(weights if wrapper is None else {wrapper: weights}, path)
        sd, _ = read_checkpoint(path)
        assert all(not k.startswith("module.") for k in sd)
        model = module_from_shapes(shapes)
        load_checkpoint(model, path)
        for key, value in values.items():
            assert torch.equal(model.state_dict()[key], value), (legacy, key)
