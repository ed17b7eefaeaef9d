"""The original's image pipeline: keep-ratio size rule, OpenCV-like bilinear, flip, normalise, pad."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gcnet.config import DataConfig
from gcnet.data import (
    collate,
    hflip_boxes,
    hflip_image,
    hflip_masks,
    normalize,
    preprocess,
    rescale_size,
    resize_keep_ratio,
    resize_masks,
    resize_to,
)
from gcnet.structures import ImageMeta, Targets


@pytest.mark.parametrize(
    "w,h,expected",
    [
        (640, 480, (1067, 800)),  # factor = min(1333/640, 800/480) = 5/3
        (480, 640, (800, 1067)),
        (2000, 500, (1333, 333)),  # long edge binds: 1333/2000 * 500 = 333.25
        (1333, 800, (1333, 800)),
        (100, 100, (800, 800)),
    ],
)
def test_rescale_size_matches_hand_values(w, h, expected):
    assert rescale_size(w, h, (1333, 800)) == expected
    assert rescale_size(w, h, (800, 1333)) == expected  # order of the scale pair does not matter


def test_bilinear_hand_worked_row():
    # 1x2 -> 1x4: source x = -0.25 (clamped), 0.25, 0.75, 1.25 (clamped); OpenCV's 11-bit
    # weights give 0.25*255 = 63.75 -> 64 and 0.75*255 = 191.25 -> 191.
    img = np.zeros((1, 2, 3), np.uint8)
    img[0, 1] = 255
    out = resize_to(img, (1, 4))
    assert out[0, :, 0].tolist() == [0, 64, 191, 255]


def test_exact_half_downscale_is_area_average():
    img = np.arange(16, dtype=np.uint8).reshape(4, 4, 1).repeat(3, axis=2)
    out = resize_to(img, (2, 2))
    # blocks (0,1,4,5)=10, (2,3,6,7)=18, (8,9,12,13)=42, (10,11,14,15)=50 -> (s + 2) >> 2
    assert out[..., 0].tolist() == [[3, 5], [11, 13]]


def test_bilinear_close_to_float_formulation():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    for size in [(90, 130), (20, 31), (37, 80)]:
        ours = resize_to(img, size).astype(np.int32)
        x = torch.from_numpy(img).permute(2, 0, 1)[None].float()
        ref = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)
        ref = torch.floor(ref + 0.5).clamp(0, 255)[0].permute(1, 2, 0).numpy().astype(np.int32)
        diff = np.abs(ours - ref)
        assert diff.max() <= 1  # fixed-point weights vs exact float: at most one level
        assert diff.mean() < 0.25  # truncations in the fixed-point kernel bias ~1 pixel in 8 down


def test_matches_opencv_inter_linear_bit_exactly():
    """The original resizes with cv2.resize(INTER_LINEAR) on uint8; ours must give the same bytes
    (random sizes, up- and downscaling, plus exact 2x downscales, where OpenCV switches to INTER_AREA)."""
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(1)
    pairs = [((int(h), int(w)), (int(oh), int(ow))) for h, w, oh, ow in rng.integers(1, 200, (60, 4))]
    pairs += [((96, 130), (48, 65)), ((480, 640), (240, 320))]
    for (h, w), (oh, ow) in pairs:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ref = cv2.resize(img, (ow, oh), interpolation=cv2.INTER_LINEAR).reshape(oh, ow, 3)
        ours = resize_to(img, (oh, ow))
        assert np.array_equal(ours, ref), ((h, w), (oh, ow), int(np.abs(ours.astype(int) - ref).max()))


def test_resize_keep_ratio_returns_scale_and_type():
    img = np.zeros((30, 40, 3), np.uint8)
    out, (sw, sh) = resize_keep_ratio(img, (100, 60))  # factor min(100/40, 60/30) = 2
    assert isinstance(out, np.ndarray) and out.shape == (60, 80, 3)
    assert (sw, sh) == (2.0, 2.0)
    out_t, _ = resize_keep_ratio(torch.from_numpy(img), (100, 60))
    assert isinstance(out_t, torch.Tensor) and tuple(out_t.shape) == (60, 80, 3)


def test_resize_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        resize_to(np.zeros((4, 4, 3), np.float32), (2, 2))
    with pytest.raises(ValueError, match="uint8"):
        resize_to(np.zeros((4, 4), np.uint8), (2, 2))


def test_nearest_mask_indices_follow_opencv_rule():
    row = torch.arange(4, dtype=torch.uint8).reshape(1, 1, 4)
    assert resize_masks(row, (1, 2)).flatten().tolist() == [0, 2]  # floor(d * 2)
    two = torch.tensor([[[0, 1]]], dtype=torch.uint8)
    assert resize_masks(two, (1, 5)).flatten().tolist() == [0, 0, 0, 1, 1]  # floor(d * 0.4)


def test_flip_boxes_images_and_masks_agree():
    boxes = torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    assert hflip_boxes(boxes, 100).tolist() == [[70.0, 20.0, 90.0, 40.0]]
    mask = torch.zeros(1, 50, 100, dtype=torch.uint8)
    mask[0, 20:40, 10:30] = 1
    flipped = hflip_masks(mask)[0]
    ys, xs = torch.nonzero(flipped, as_tuple=True)
    # pixel columns 70..89 cover [70, 90) in continuous coordinates
    assert (int(xs.min()), int(xs.max()) + 1) == (70, 90)
    img = torch.arange(2 * 3 * 4).reshape(2, 3, 4)
    assert torch.equal(hflip_image(img)[:, :, 0], img[:, :, 3])
    assert torch.equal(hflip_image(img.permute(1, 2, 0), channels_last=True)[:, 0], img.permute(1, 2, 0)[:, 3])


def test_normalize_rgb_statistics():
    img = np.zeros((2, 2, 3), np.uint8)
    img[0, 0] = (255, 128, 0)
    out = normalize(img, (123.675, 116.28, 103.53), (58.395, 57.12, 57.375))
    assert out.dtype == torch.float32 and tuple(out.shape) == (3, 2, 2)
    expected = [(255 - 123.675) / 58.395, (128 - 116.28) / 57.12, (0 - 103.53) / 57.375]
    assert torch.allclose(out[:, 0, 0], torch.tensor(expected), atol=1e-6)


def test_preprocess_meta_and_shape():
    cfg = DataConfig(scale=(200, 100))
    img = np.full((48, 64, 3), 200, np.uint8)
    tensor, meta = preprocess(img, cfg)
    # factor = min(200/64, 100/48) = 2.0833 -> (133, 100)
    assert tuple(tensor.shape) == (3, 100, 133)
    assert meta.img_shape == (100, 133) and meta.ori_shape == (48, 64)
    assert meta.scale_factor == (133 / 64, 100 / 48) and meta.flip is False
    assert torch.allclose(tensor[0], torch.full((100, 133), (200 - 123.675) / 58.395))


def test_collate_pads_to_divisor_with_zero():
    a = torch.ones(3, 50, 70)
    b = torch.full((3, 60, 40), 2.0)
    ma = Targets(torch.zeros(1, 4), torch.zeros(1, dtype=torch.int64), torch.ones(1, 50, 70, dtype=torch.uint8))
    mb = Targets(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), torch.zeros(0, 60, 40, dtype=torch.uint8))
    meta = ImageMeta((1, 1), (1, 1), (1.0, 1.0))
    batch = collate([(a, meta, ma), (b, meta, mb)], size_divisor=32)
    assert tuple(batch.images.shape) == (2, 3, 64, 96)
    assert batch.images[0, :, :50, :70].eq(1).all() and batch.images[0, :, 50:].eq(0).all()
    assert batch.images[0, :, :, 70:].eq(0).all() and batch.images[1, :, :60, :40].eq(2).all()
    assert tuple(batch.targets[0].masks.shape) == (1, 64, 96) and int(batch.targets[0].masks.sum()) == 50 * 70
    assert tuple(batch.targets[1].masks.shape) == (0, 64, 96)
    assert collate([(a, meta, None)]).targets is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_resize_same_on_cuda():
    rng = np.random.default_rng(2)
    img = torch.from_numpy(rng.integers(0, 256, (31, 45, 3), dtype=np.uint8))
    assert torch.equal(resize_to(img.cuda(), (70, 99)).cpu(), resize_to(img, (70, 99)))
