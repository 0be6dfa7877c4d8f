import io

import numpy as np
import pytest
from PIL import Image

from reface_core.imageio import (
    ImageLoadError,
    ImageTooLargeError,
    iter_image_files,
    load_image,
    save_image,
)
from tests.conftest import make_rgb


def _png_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=kw.pop("format", "PNG"), **kw)
    return buf.getvalue()


def test_rgb_roundtrip(tmp_path):
    arr = make_rgb(40, 30)
    p = save_image(tmp_path / "a.png", arr)
    out = load_image(p)
    assert out.dtype == np.uint8 and out.shape == (40, 30, 3)
    np.testing.assert_array_equal(out, arr)


def test_gray_becomes_rgb(tmp_path):
    g = (np.arange(20 * 10) % 256).astype(np.uint8).reshape(20, 10)
    Image.fromarray(g, mode="L").save(tmp_path / "g.png")
    out = load_image(tmp_path / "g.png")
    assert out.shape == (20, 10, 3)
    np.testing.assert_array_equal(out[..., 0], g)
    np.testing.assert_array_equal(out[..., 1], g)


def test_rgba_composited_on_white(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 200           # red under the alpha
    rgba[:4, :, 3] = 255         # top half opaque, bottom half fully transparent
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out.shape == (8, 8, 3)
    assert tuple(out[0, 0]) == (200, 0, 0)
    assert tuple(out[7, 7]) == (255, 255, 255)


def test_16bit_gray_scaled_to_8bit(tmp_path):
    a16 = np.array([[0, 257 * 128, 65535]], dtype=np.uint16)
    Image.fromarray(a16).save(tmp_path / "d.png")
    assert Image.open(tmp_path / "d.png").mode.startswith("I")
    out = load_image(tmp_path / "d.png")
    assert out.shape == (1, 3, 3)
    assert out[0, :, 0].tolist() == [0, 128, 255]


def test_exif_orientation_applied(tmp_path):
    arr = make_rgb(20, 40)  # landscape on disk
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    out = load_image(tmp_path / "r.jpg")
    assert out.shape == (40, 20, 3)  # displayed upright: portrait
    # The top-left of the displayed image is the bottom-left of the stored one.
    np.testing.assert_allclose(out[0, 0].astype(int), arr[-1, 0].astype(int), atol=25)


def test_truncated_file_clear_error(tmp_path):
    data = _png_bytes(Image.fromarray(make_rgb(64, 64)), format="JPEG")
    p = tmp_path / "trunc.jpg"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError) as e:
        load_image(p)
    assert "trunc.jpg" in str(e.value) and "truncated" in str(e.value)


def test_non_image_clear_error(tmp_path):
    p = tmp_path / "page.png"
    p.write_text("<html><body>not an image</body></html>")
    with pytest.raises(ImageLoadError, match=r"page\.png: not a recognised image format"):
        load_image(p)


def test_missing_and_empty(tmp_path):
    with pytest.raises(ImageLoadError, match="does not exist"):
        load_image(tmp_path / "nope.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageLoadError, match="empty"):
        load_image(tmp_path / "empty.png")


def test_pixel_cap_checked_before_decoding(tmp_path):
    big = Image.new("L", (3000, 2000))
    p = tmp_path / "big.png"
    big.save(p)
    with pytest.raises(ImageTooLargeError, match=r"big\.png: 3000x2000"):
        load_image(p, max_pixels=5_000_000)
    assert load_image(p, max_pixels=6_000_000).shape == (2000, 3000, 3)


def test_bytes_input_named_in_errors():
    with pytest.raises(ImageLoadError, match="http://x/y.jpg"):
        load_image(b"GIF89a-garbage", name="http://x/y.jpg")
    ok = load_image(_png_bytes(Image.fromarray(make_rgb(5, 6))))
    assert ok.shape == (5, 6, 3)


def test_save_is_atomic_on_failure(tmp_path):
    p = save_image(tmp_path / "keep.png", make_rgb(8, 8))
    before = p.read_bytes()
    with pytest.raises(ValueError):
        save_image(p, np.zeros((8, 8, 3), np.float32))  # wrong dtype: nothing written
    assert p.read_bytes() == before
    assert sorted(x.name for x in tmp_path.iterdir()) == ["keep.png"]


def test_iter_image_files_sorted_and_skips_hidden(tmp_path):
    for name in ["b/2.png", "a/1.jpg", ".hidden/x.png", "a/notes.txt"]:
        f = tmp_path / name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"x")
    assert [p.relative_to(tmp_path).as_posix() for p in iter_image_files(tmp_path)] == \
        ["a/1.jpg", "b/2.png"]


@pytest.mark.realdata
def test_real_photos_load(data_root):
    files = list(iter_image_files(data_root / "unaligned_named"))
    assert len(files) >= 20
    for f in files:
        arr = load_image(f)
        assert arr.ndim == 3 and arr.shape[2] == 3 and arr.dtype == np.uint8
    gray = load_image(next(iter_image_files(data_root / "att_faces_lowres")))
    assert gray.shape == (112, 92, 3)
    assert (gray[..., 0] == gray[..., 1]).all()
