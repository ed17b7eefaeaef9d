"""gcnet.predict's inputs (paths, directories, arrays, PIL images, lists and iterators of them,
mixed), streaming, tiling, the background decoding, and predict_to_dir's batches."""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from PIL import Image

from gcnet.checkpoint import save_checkpoint
from gcnet.cli import main
from gcnet.config import config_to_dict
from gcnet.errors import UserError
from gcnet.inference import predict, predict_to_dir
from gcnet.prefetch import Failed, prefetch
from gcnet.tiling import drop_cut, merge_tiles, tile_windows
from tiny_models import tiny_config, tiny_detector

CFG = tiny_config().data  # test scale 128x96


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return tiny_detector(score_thr=-1.0)  # every box kept: 10 detections per image to compare


def _array(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    array[h // 4 : h // 2, w // 4 : w // 2] = (250, 40, 40)
    return array


def _same(a, b) -> None:
    assert len(a) == len(b) > 0
    torch.testing.assert_close(a.boxes, b.boxes, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(a.scores, b.scores, rtol=1e-4, atol=1e-5)
    assert torch.equal(a.labels, b.labels)


def _counting_forwards(model: torch.nn.Module) -> list[int]:
    calls: list[int] = []
    model.register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_mixed_inputs_give_one_result_each_in_order_with_their_source(model, tmp_path) -> None:
    arrays = [_array(60, 80, 0), _array(80, 60, 1), _array(60, 80, 2)]
    folder = tmp_path / "folder"
    folder.mkdir()
    for i, array in enumerate(arrays[1:]):
        Image.fromarray(array).save(folder / f"{i}.png")
    Image.fromarray(arrays[0]).save(tmp_path / "a.png")
    singles = [predict(model, a, CFG)[0] for a in arrays]

    mixed = [tmp_path / "a.png", str(folder), arrays[1], Image.fromarray(arrays[0])]
    results = predict(model, mixed, CFG, batch_size=2)
    assert len(results) == 5  # the directory is its two images
    for det, expected in zip(results, [0, 1, 2, 1, 0]):
        _same(det, singles[expected])
    assert [r.path for r in results[:3]] == [str(tmp_path / "a.png"), str(folder / "0.png"), str(folder / "1.png")]
    assert results[0].image is None and np.array_equal(results[3].image, arrays[1])
    assert np.array_equal(results[4].image, arrays[0])  # a PIL image: the RGB array used

    def mixed_generator() -> Iterator[object]:
        yield arrays[2]
        yield str(folder / "1.png")

    from_generator = predict(model, mixed_generator(), CFG)  # type: ignore[arg-type]
    assert len(from_generator) == 2 and np.array_equal(from_generator[0].image, arrays[2])
    assert from_generator[0].path is None and from_generator[1].path == str(folder / "1.png")
    _same(from_generator[0], singles[2])


def test_stream_is_lazy_and_bounded_on_an_endless_iterator(model) -> None:
    pulled: list[int] = []

    def camera() -> Iterator[np.ndarray]:
        for i in itertools.count():
            pulled.append(i)
            yield _array(48, 64, i % 3)

    stream = predict(model, camera(), CFG, batch_size=2, stream=True)
    assert not isinstance(stream, list) and not pulled  # nothing runs before the first next()
    first = list(itertools.islice(stream, 4))
    assert len(first) == 4
    _same(first[3], predict(model, _array(48, 64, 0), CFG)[0])
    assert len(pulled) <= 4 + 2 * 2 + 1  # read ahead by at most the batch and the prefetch queue
    stream.close()  # type: ignore[attr-defined]
    assert not any(t.name == "gcnet-prefetch" for t in threading.enumerate())
    assert not model.training


def test_bad_inputs_fail_before_any_work_naming_the_item(model, tmp_path) -> None:
    net = tiny_detector()
    forwards = _counting_forwards(net)
    good = _array(48, 64, 0)
    with pytest.raises(TypeError, match=r"images\[2\]: unsupported image input of type int"):
        predict(net, [good, good, 3], CFG)
    with pytest.raises(ValueError, match=r"images\[1\]: expected an HxWx3 RGB array, got shape \(4, 4, 5\)"):
        predict(net, [good, np.zeros((4, 4, 5), np.uint8)], CFG)
    with pytest.raises(ValueError, match=r"images\[0\]: expected a uint8 RGB array, got dtype float32"):
        predict(net, [good.astype(np.float32)], CFG)
    with pytest.raises(UserError, match="nope.png: no such image file or directory"):
        predict(net, [good, tmp_path / "nope.png"], CFG)
    assert not forwards  # all refused before the model ran
    with pytest.raises(TypeError, match="images: unsupported image input of type int"):
        predict(net, 3, CFG)  # type: ignore[arg-type]
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png: cannot decode image"):
        predict(net, tmp_path / "broken.png", CFG)
    stream = predict(net, iter([good, "x"]), CFG, stream=True)  # an iterator is checked as it is read
    assert np.array_equal(next(stream).image, good)
    with pytest.raises(UserError, match="x: no such image file"):
        next(stream)
    with pytest.raises(ValueError, match="batch_size"):
        predict(net, good, CFG, batch_size=0)


def _tile_parts(model, image: np.ndarray, size: int, overlap: float):
    """The full image's and each window's detections, one at a time, with the windows' offsets."""
    windows = tile_windows(*image.shape[:2], size, overlap)
    crops = [image] + [image[y0:y1, x0:x1] for x0, y0, x1, y1 in windows]
    parts = [predict(model, np.ascontiguousarray(c), CFG)[0] for c in crops]
    return parts, windows, [(0, 0)] + [(x0, y0) for x0, y0, _, _ in windows]


def test_tiles_are_the_full_image_and_its_windows_merged(model) -> None:
    image = _array(96, 112, 4)
    tiled = predict(model, image, CFG, batch_size=4, tile=64, tile_overlap=0.25)[0]
    parts, windows, offsets = _tile_parts(model, image, 64, 0.25)
    assert len(windows) == 2 * 2
    uncut = [parts[0]] + [drop_cut(part, window, (96, 112)) for part, window in zip(parts[1:], windows)]
    assert sum(map(len, uncut)) < sum(map(len, parts))  # the random model has boxes at window edges
    cap = model.cfg.roi.max_per_img  # --max-det holds for the merged image too
    _same(tiled, merge_tiles(uncut, offsets, (96, 112), max_per_img=cap))
    assert tiled.masks is not None and tiled.masks.shape == (len(tiled), 96, 112)
    assert len(tiled) == cap and not torch.equal(tiled.boxes, parts[0].boxes)  # windows' boxes among the best
    kept = predict(model, image, CFG, batch_size=4, tile=64, tile_overlap=0.25, tile_drop_cut=False)[0]
    _same(kept, merge_tiles(parts, offsets, (96, 112), max_per_img=cap))
    small = _array(50, 60, 5)  # fits one window: the plain prediction
    _same(predict(model, small, CFG, tile=64)[0], predict(model, small, CFG)[0])


def test_tiled_merge_follows_the_models_nms_settings() -> None:
    """Class-agnostic NMS and the detection cap (0: all) apply across windows as within one."""
    model = tiny_detector(score_thr=-1.0, max_per_img=0, class_agnostic_nms=True)
    image = _array(96, 112, 4)
    tiled = predict(model, image, CFG, tile=64, tile_overlap=0.25, tile_drop_cut=False)[0]
    parts, _, offsets = _tile_parts(model, image, 64, 0.25)
    _same(tiled, merge_tiles(parts, offsets, (96, 112), class_agnostic=True))
    per_class = merge_tiles(parts, offsets, (96, 112))
    assert len(tiled) < len(per_class) and len(tiled) > 10  # across classes suppressed; no cap


def test_prefetch_keeps_order_hands_back_item_errors_and_reraises_the_source() -> None:
    def half(x: int) -> float:
        if x == 2:
            raise ValueError("two")
        return x / 2

    out = list(prefetch(range(4), half, depth=2))
    assert [item for item, _ in out] == [0, 1, 2, 3]
    assert out[1][1] == 0.5 and isinstance(out[2][1], Failed) and str(out[2][1].error) == "two"

    def broken() -> Iterator[int]:
        yield 1
        raise OSError("source gone")

    got = []
    with pytest.raises(OSError, match="source gone"):
        for item, _ in prefetch(broken(), half, depth=1):
            got.append(item)
    assert got == [1]


def test_predict_to_dir_batches_equal_singles_and_still_skips_the_unreadable(model, tmp_path) -> None:
    paths = []
    for i, (h, w) in enumerate([(60, 80), (60, 80), (80, 60), (60, 80), (60, 80)]):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(_array(h, w, i)).save(paths[-1])
    paths[3].write_bytes(b"truncated")
    skips: list[str] = []
    one = predict_to_dir(model, paths, tmp_path / "one", CFG, score_thr=0.0, on_skip=skips.append)
    four = predict_to_dir(model, paths, tmp_path / "four", CFG, score_thr=0.0, on_skip=skips.append, batch_size=4)
    assert len(skips) == 2 and all("3.png: cannot decode image" in s for s in skips)
    assert one.done == four.done == 4 and one.seconds > 0
    a, b = (json.loads(p.read_text()) for p in (one.detections, four.detections))
    assert [r["image_id"] for r in a] == [r["image_id"] for r in b] and {r["image_id"] for r in a} == {1, 2, 3, 5}
    for x, y in zip(a, b):
        assert x["category_id"] == y["category_id"]
        assert max(abs(p - q) for p, q in zip(x["bbox"], y["bbox"])) < 1e-2
    assert json.loads(one.images.read_text()) == json.loads(four.images.read_text())


def test_cli_tile_and_batch_size_reach_the_prediction(tmp_path) -> None:
    cfg = tiny_config(max_per_img=0)  # no cap: the windows' detections all show
    model = tiny_detector(score_thr=-1.0, max_per_img=0)
    ckpt = save_checkpoint(
        tmp_path / "tiny.pth", model, meta={"config": config_to_dict(cfg), "class_names": list(cfg.class_names)}
    )
    image = _array(96, 112, 6)
    Image.fromarray(image).save(tmp_path / "big.png")
    argv = ["predict", str(ckpt), str(tmp_path / "big.png"), "--out", str(tmp_path / "out"), "--score-thr", "0"]
    tiling = ["--tile", "64", "--tile-overlap", "0.25", "--batch-size", "3"]
    cut, whole = (
        len(predict(model, image, cfg.data, tile=64, tile_overlap=0.25, tile_drop_cut=d)[0]) for d in (False, True)
    )
    assert cut > whole  # so the flag shows in the records
    for keep_cut in (False, True):
        flags = ["--tile-keep-cut"] if keep_cut else []
        assert main([*argv, *tiling, *flags, "--set", "model.roi.score_thr=-1"]) == 0  # as the model was built
        records = json.loads((tmp_path / "out" / "detections.json").read_text())
        expected = predict(model, image, cfg.data, tile=64, tile_overlap=0.25, tile_drop_cut=not keep_cut)[0]
        assert len(records) == len(expected) > len(predict(model, image, cfg.data)[0])
        assert sorted(r["score"] for r in records) == pytest.approx(sorted(expected.scores.tolist()), abs=1e-5)
    assert main([*argv, "--tile", "0"]) == 2  # a usage error, one line
