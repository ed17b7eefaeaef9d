"""load_image against OpenCV's IMREAD_COLOR (the original's decoder) for every mode Pillow opens."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gcnet.data import DatasetError, load_image

cv2 = pytest.importorskip("cv2")

H, W = 6, 9
RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)
GRAY = RNG.integers(0, 256, (H, W), dtype=np.uint8)
ALPHA = RNG.integers(0, 256, (H, W), dtype=np.uint8)
G16 = RNG.integers(0, 65536, (H, W), dtype=np.uint16)
G16[0, :4] = (0, 255, 256, 65535)  # the edges of the high byte
JPEG = 2  # levels two libjpeg builds may differ by; lossless formats must match exactly


def _opencv(path: Path) -> np.ndarray | None:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return None if bgr is None else bgr[:, :, ::-1]


def _save(image: Image.Image, **kwargs: object) -> Callable[[Path], None]:
    return lambda path: image.save(path, **kwargs)


def _palette_with_transparency(path: Path) -> None:
    image = Image.fromarray(RGB).quantize(16)
    image.info["transparency"] = 3
    image.save(path)


def _cmyk_jpeg_without_adobe_marker(path: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(RGB).convert("CMYK").save(buffer, "JPEG", quality=95)
    data = buffer.getvalue()
    start = data.index(b"\xff\xee")  # APP14 "Adobe": without it the samples are read as stored
    length = int.from_bytes(data[start + 2 : start + 4], "big")
    path.write_bytes(data[:start] + data[start + 2 + length :])


def _pgm16(path: Path) -> None:
    path.write_bytes(b"P5\n%d %d\n65535\n" % (W, H) + G16.astype(">u2").tobytes())  # Pillow opens it as "I"


def _cv2_write(array: np.ndarray) -> Callable[[Path], None]:
    return lambda path: cv2.imwrite(str(path), array)


CASES: dict[str, tuple[str, Callable[[Path], None], int]] = {  # file name -> (Pillow mode, writer, tolerance)
    "1.png": ("1", _save(Image.fromarray(GRAY > 128).convert("1")), 0),
    "L.png": ("L", _save(Image.fromarray(GRAY)), 0),
    "LA.png": ("LA", _save(Image.merge("LA", [Image.fromarray(GRAY), Image.fromarray(ALPHA)])), 0),
    "P.png": ("P", _save(Image.fromarray(RGB).quantize(16)), 0),
    "P_trns.png": ("P", _palette_with_transparency, 0),
    "RGB.png": ("RGB", _save(Image.fromarray(RGB)), 0),
    "RGBA.png": ("RGBA", _save(Image.fromarray(np.dstack([RGB, ALPHA]))), 0),
    "I16.png": ("I;16", _save(Image.fromarray(G16)), 0),
    "I16.tif": ("I;16", _save(Image.fromarray(G16)), 0),
    "I.pgm": ("I", _pgm16, 0),
    "RGB16.png": ("RGB", _cv2_write(np.dstack([G16, G16[::-1], G16[:, ::-1]])), 0),
    "RGBA16.png": ("RGBA", _cv2_write(np.dstack([G16, G16[::-1], G16[:, ::-1], G16])), 0),
    "CMYK.jpg": ("CMYK", _save(Image.fromarray(RGB).convert("CMYK"), quality=95), JPEG),
    "CMYK_plain.jpg": ("CMYK", _cmyk_jpeg_without_adobe_marker, JPEG),
    "CMYK.tif": ("CMYK", _save(Image.fromarray(RGB).convert("CMYK")), 0),
    "RGBA.tif": ("RGBA", _save(Image.fromarray(np.dstack([RGB, ALPHA]))), 0),  # unassociated alpha
    "RGBA_plain.tif": ("RGBA", _cv2_write(np.dstack([RGB[:, :, ::-1], ALPHA])), 0),  # no ExtraSamples tag
    "LA.tif": ("LA", _save(Image.merge("LA", [Image.fromarray(GRAY), Image.fromarray(ALPHA)])), 0),
    "1.tif": ("1", _save(Image.fromarray(GRAY > 128).convert("1")), 0),
    "P.bmp": ("P", _save(Image.fromarray(RGB).quantize(16)), 0),
    "L.jpg": ("L", _save(Image.fromarray(GRAY), quality=95), JPEG),
    "RGB.jpg": ("RGB", _save(Image.fromarray(RGB), quality=95), JPEG),
    "RGBA.webp": ("RGBA", _save(Image.fromarray(np.dstack([RGB, ALPHA])), lossless=True), 0),
}


@pytest.mark.parametrize("name", list(CASES))
def test_every_mode_decodes_as_opencv_imread_color(name: str, tmp_path: Path) -> None:
    mode, write, tolerance = CASES[name]
    path = tmp_path / name
    write(path)
    with Image.open(path) as image:
        assert image.mode == mode  # the case covers the mode it names
    expected = _opencv(path)
    assert expected is not None
    got = load_image(path)
    assert got.dtype == np.uint8 and got.shape == expected.shape
    assert int(np.abs(got.astype(int) - expected.astype(int)).max()) <= tolerance


def test_a_16_bit_png_keeps_its_contrast(tmp_path: Path) -> None:
    """The reported case: a 16-bit PNG used to come out all white (Pillow's I;16 -> RGB clips)."""
    path = tmp_path / "depth.png"
    Image.fromarray(np.linspace(0, 65535, H * W).reshape(H, W).astype(np.uint16)).save(path)
    got = load_image(path)
    assert got.min() == 0 and got.max() == 255 and len(np.unique(got)) > 10


@pytest.mark.parametrize(
    "mode,values",
    [("F", RNG.uniform(-3, 300, (H, W)).astype(np.float32)), ("I", RNG.integers(-5, 70000, (H, W)).astype(np.int32))],
)
def test_32_bit_samples_follow_opencvs_own_conversion_rules(mode: str, values: np.ndarray, tmp_path: Path) -> None:
    """OpenCV's IMREAD_COLOR reads no 32-bit TIFF (it returns None): floats take its convertTo rule
    (round half to even, saturate), integers its 16-bit rule (clip to 16 bits, high byte)."""
    path = tmp_path / f"{mode}.tif"
    Image.fromarray(values, mode).save(path)
    assert _opencv(path) is None
    got = load_image(path)
    if mode == "F":
        expected = np.clip(np.rint(values.astype(np.float64)), 0, 255).astype(np.uint8)
    else:
        expected = (np.clip(values, 0, 65535) >> 8).astype(np.uint8)
    assert np.array_equal(got, np.repeat(expected[:, :, None], 3, axis=2))


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_exif_orientation_as_opencv(orientation: int, suffix: str, tmp_path: Path) -> None:
    array = np.zeros((8, 16, 3), np.uint8)
    array[:4, :4] = 255  # a white corner shows any turn or flip
    array[4:, 12:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}{suffix}"
    Image.fromarray(array).save(path, exif=exif.tobytes(), **({"quality": 95} if suffix == ".jpg" else {}))
    expected = _opencv(path)
    got = load_image(path)
    assert got.shape == expected.shape
    assert int(np.abs(got.astype(int) - expected.astype(int)).max()) <= (40 if suffix == ".jpg" else 0)


def test_undecodable_and_missing_files_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DatasetError, match=r"bad.png: cannot decode image"):
        load_image(tmp_path / "bad.png")
    with pytest.raises(DatasetError, match=r"gone.png: image file not found"):
        load_image(tmp_path / "gone.png")


def test_a_worker_traceback_is_cut_back_to_its_line() -> None:
    """torch's DataLoader re-raises a worker's error as DatasetError(whole traceback text)."""
    text = (
        "Caught DatasetError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\n    raise DatasetError(...)\n'
        "gcnet.image_io.DatasetError: img/a.png: cannot decode image (truncated)\n"
    )
    err = DatasetError(text)
    assert str(err) == "img/a.png: cannot decode image (truncated)" and err.worker_traceback == text
