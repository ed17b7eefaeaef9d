"""gcnet.export: torch.export programs and ONNX files of the static parts vs eager (tiny configs)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

pytest.importorskip("gcnet.models.roi")
from gcnet import bench, export  # noqa: E402
from gcnet.config import DataConfig  # noqa: E402
from tiny_models import tiny_detector  # noqa: E402

torch.set_num_threads(1)
DATA = DataConfig(scale=(128, 96))
IMAGE = (96, 128)  # original (h, w); the pipeline keeps it (factor 1) and it is already padded


@pytest.fixture(scope="module", params=[False, True], ids=["mask-rcnn", "cascade"])
def setup(request):
    model = tiny_detector(request.param)
    images, metas = bench.synthetic_input(IMAGE, DATA)
    with torch.no_grad():
        ref = model(images, metas)
    return model, images, metas, ref


def _eager_part_outputs(model, images):
    """Independent formulation of every part's outputs through the model's own public calls."""
    with torch.no_grad():
        feats = model.extract_features(images)
        cls_outs, reg_outs = model.rpn_head(feats)
    return (*feats, *cls_outs, *reg_outs)


def _assert_same_detections(ref, out, atol):
    assert len(ref) == len(out)
    for a, b in zip(ref, out):
        assert torch.equal(a.labels, b.labels)
        torch.testing.assert_close(b.boxes, a.boxes, atol=atol, rtol=0)
        torch.testing.assert_close(b.scores, a.scores, atol=atol, rtol=0)
        assert (a.masks.full() != b.masks.full()).float().mean() <= 1e-3  # a pixel exactly at 0.5 may flip
        assert b.class_names == a.class_names


def test_parts_cover_every_stage(setup):
    model, *_ = setup
    parts = export.detector_parts(model)
    stages = len(model.cfg.roi.stages)
    assert sorted(parts) == sorted(
        ["features", *[f"bbox_head{i}" for i in range(stages)], *[f"mask_head{i}" for i in range(stages)]]
    )


def test_exported_program_equals_eager(setup):
    """torch.export runs the same ATen ops: outputs equal eager to 1e-5 (float32 rounding)."""
    model, images, metas, ref = setup
    programs = export.export_program(model, images.shape[-2:])
    expected = _eager_part_outputs(model, images)
    got = export.program_runner(programs["features"])(images)
    assert len(got) == 15  # 5 FPN levels, 5 RPN logit maps, 5 RPN delta maps
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)
    # the box head takes any number of RoIs, 0 included
    head = (
        model.roi_head.bbox_head[0]
        if isinstance(model.roi_head.bbox_head, torch.nn.ModuleList)
        else model.roi_head.bbox_head
    )
    run = export.program_runner(programs["bbox_head0"])
    for k in (0, 1, 7):
        x = torch.randn(k, 32, 7, 7)
        with torch.no_grad():
            e_cls, e_reg = head(x)
        g_cls, g_reg = run(x)
        torch.testing.assert_close(g_cls, e_cls, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(g_reg, e_reg, atol=1e-5, rtol=1e-5)
    detector = export.ExportedDetector(model, export.DetectorParts.from_programs(programs))
    _assert_same_detections(ref, detector(images, metas), atol=1e-5)


def test_exported_glue_is_the_eager_code(setup):
    """With the eager modules as the parts, the exported detector's glue (proposal selection, RoI
    head) gives detections equal to the eager model's to the bit: there is no second copy of it."""
    model, images, metas, ref = setup
    eager = export.detector_parts(model)
    heads = lambda prefix: [eager[n] for n in sorted(eager) if n.startswith(prefix)]  # noqa: E731
    parts = export.DetectorParts(
        features=eager["features"], bbox_heads=heads("bbox_head"), mask_heads=heads("mask_head")
    )
    out = export.ExportedDetector(model, parts)(images, metas)
    assert sum(len(d) for d in ref) > 0
    for a, b in zip(ref, out):
        for name in ("boxes", "scores", "labels"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
        assert torch.equal(a.masks.full(), b.masks.full())
    assert out[0].class_names == ref[0].class_names


def test_exported_detector_runs_the_flip_tta_of_its_detector(setup):
    """``model.test_flip`` holds for the exported detector too: with the eager modules as parts it
    equals the eager detector's flip TTA to the bit, and differs from one view."""
    model, images, metas, ref = setup
    flipping = copy.deepcopy(model)
    flipping.cfg = dataclasses.replace(model.cfg, test_flip=True)
    with torch.no_grad():
        expected = flipping(images, metas)
    eager = export.detector_parts(flipping)
    heads = lambda prefix: [eager[n] for n in sorted(eager) if n.startswith(prefix)]  # noqa: E731
    parts = export.DetectorParts(
        features=eager["features"], bbox_heads=heads("bbox_head"), mask_heads=heads("mask_head")
    )
    out = export.ExportedDetector(flipping, parts)(images, metas)
    assert [len(d) for d in out] != [len(d) for d in ref] or any(
        not torch.equal(a.boxes, b.boxes) for a, b in zip(out, ref)
    )
    for a, b in zip(expected, out):
        for name in ("boxes", "scores", "labels"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
        assert torch.equal(a.masks.full(), b.masks.full())


class _RejectsEmptyBatch:
    """Stands in for an ExportedProgram whose module, like torch 2.4's input check, refuses a
    size-0 first dim ("Expected input x.shape[0] = 0 to be of the form s0")."""

    def __init__(self, module):
        self.inner = module
        self.sizes = []

    def module(self):
        def call(x):
            self.sizes.append(int(x.shape[0]))
            if x.shape[0] == 0:
                raise RuntimeError("Expected input x.shape[0] = 0 to be of the form s0")
            return self.inner(x)

        return call


@pytest.mark.parametrize("part", ["bbox_head0", "mask_head0"])
def test_program_runner_takes_zero_rois(setup, part):
    """program_runner gives empty outputs of the right shapes for 0 RoIs, also where the program
    itself rejects an empty batch (it runs one dummy RoI and drops it), and leaves k > 0 alone."""
    model, *_ = setup
    program = export.export_program(model, IMAGE)[part]
    size = model.cfg.roi.bbox_roi_size if part.startswith("bbox") else model.cfg.roi.mask_roi_size
    empty, three = torch.zeros(0, 32, size, size), torch.randn(3, 32, size, size)
    expected = export.program_runner(program)(three)
    strict = _RejectsEmptyBatch(program.module())
    run = export.program_runner(strict)
    for got in (export.program_runner(program)(empty), run(empty)):
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            assert g.shape == (0, *e.shape[1:]) and g.dtype == e.dtype
    assert strict.sizes == [1]
    assert all(torch.equal(g, e) for g, e in zip(run(three), expected)) and strict.sizes == [1, 3]


def test_onnx_equals_eager(setup, tmp_path):
    """onnxruntime's CPU kernels differ from ATen's in summation order: features within 1e-4
    (values are O(1)); boxes within 1e-3 px, scores within 1e-4."""
    pytest.importorskip("onnxruntime")
    model, images, metas, ref = setup
    files = export.export_onnx(model, tmp_path / "onnx", images.shape[-2:])
    assert all(f.exists() and f.stat().st_size > 0 for f in files.values())
    got = export.onnx_runner(files["features"])(images)
    for g, e in zip(got, _eager_part_outputs(model, images)):
        torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4)
    mask_run = export.onnx_runner(files["mask_head0"])
    head = (
        model.roi_head.mask_head[0]
        if isinstance(model.roi_head.mask_head, torch.nn.ModuleList)
        else model.roi_head.mask_head
    )
    x = torch.randn(5, 32, 14, 14)
    with torch.no_grad():
        torch.testing.assert_close(mask_run(x)[0], head(x), atol=1e-4, rtol=1e-4)
    detector = export.ExportedDetector(model, export.DetectorParts.from_onnx(files))
    out = detector(images, metas)
    _assert_same_detections(ref, out, atol=1e-3)


def test_saved_programs_load_back_into_the_same_detector(setup, tmp_path):
    """save_programs / load_programs round trip (.pt2 archives, what `gcnet export` writes)."""
    model, images, metas, ref = setup
    files = export.save_programs(export.export_program(model, images.shape[-2:]), tmp_path / "programs")
    assert sorted(f.name for f in files.values()) == sorted(f"{n}.pt2" for n in export.detector_parts(model))
    loaded = export.load_programs(tmp_path / "programs")
    out = export.ExportedDetector(model, export.DetectorParts.from_programs(loaded))(images, metas)
    _assert_same_detections(ref, out, atol=1e-4)
    with pytest.raises(ValueError, match="folder"):
        export.save_programs({}, tmp_path / "model.pt2")


def test_export_rejects_unpadded_size_and_file_path(setup, tmp_path):
    model, *_ = setup
    with pytest.raises(ValueError, match="multiple of 32"):
        export.export_program(model, (100, 128))
    with pytest.raises(ValueError, match="folder"):
        export.export_onnx(model, tmp_path / "model.onnx", (96, 128))
    with pytest.raises(TypeError, match="TwoStageDetector"):
        export.detector_parts(torch.nn.Linear(2, 2))


def test_exported_detector_checks_stage_count(setup):
    model, *_ = setup
    fn = lambda x: (x,)  # noqa: E731
    parts = export.DetectorParts(features=fn, bbox_heads=[fn] * 5, mask_heads=[fn] * 5)
    with pytest.raises(ValueError, match="bbox_head"):
        export.ExportedDetector(model, parts)
