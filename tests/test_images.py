"""Image loading that survives real input: every accepted kind, every mode rule, every bad case of issue 2."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from spatialreward.images import ALPHA_BACKGROUND, ImageLoadError, load_image


def _png_bytes(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _rgb(h=8, w=12, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_path_bytes_pil_numpy_torch_agree(tmp_path):
    arr = _rgb()
    path = tmp_path / "a.png"
    Image.fromarray(arr).save(path)
    items = [
        path,
        str(path),
        path.read_bytes(),
        Image.fromarray(arr),
        arr,
        arr.astype(np.float32) / 255.0,
        torch.from_numpy(arr).permute(2, 0, 1).float() / 255.0,  # CHW float 0-1
        torch.from_numpy(arr).permute(2, 0, 1).contiguous(),  # CHW uint8
    ]
    for item in items:
        out = load_image(item)
        assert out.mode == "RGB" and out.size == (12, 8)
        np.testing.assert_array_equal(np.asarray(out), arr)


def test_exif_orientation_is_applied():
    arr = np.zeros((4, 6, 3), np.uint8)
    arr[0, 0] = 255  # a marker in the top-left corner
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    out = load_image(_png_bytes(img, "JPEG", exif=exif.tobytes(), quality=100))
    assert out.size == (4, 6)  # width and height swap
    a = np.asarray(out).astype(int)
    assert a[0, -1].sum() > 300  # the marker moved to the top-right corner


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "YCbCr"])
def test_modes_become_rgb(mode):
    base = Image.fromarray(_rgb())
    img = base.convert(mode)
    out = load_image(_png_bytes(img, "TIFF" if mode in ("CMYK", "YCbCr") else "PNG"))
    assert out.mode == "RGB" and out.size == base.size


def test_alpha_is_composited_over_white():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200  # red-ish
    rgba[:2, :, 3] = 0  # top half fully transparent
    rgba[2:, :, 3] = 255  # bottom half opaque
    for img in (Image.fromarray(rgba, "RGBA"), Image.fromarray(rgba, "RGBA").convert("LA")):
        out = np.asarray(load_image(_png_bytes(img)))
        np.testing.assert_array_equal(out[0, 0], ALPHA_BACKGROUND)
        assert tuple(out[3, 3]) != ALPHA_BACKGROUND


def test_palette_with_transparency():
    img = Image.new("P", (4, 4), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.putpixel((3, 3), 1)
    img.info["transparency"] = 0
    out = np.asarray(load_image(_png_bytes(img)))
    np.testing.assert_array_equal(out[0, 0], ALPHA_BACKGROUND)
    np.testing.assert_array_equal(out[3, 3], [255, 0, 0])


def test_sixteen_bit_grey_is_scaled():
    arr16 = np.full((4, 4), 65535, np.uint16)
    arr16[0, 0] = 257 * 100
    img = Image.fromarray(arr16)  # mode I;16
    assert img.mode.startswith("I;16")
    out = np.asarray(load_image(_png_bytes(img)))
    assert out[1, 1].tolist() == [255, 255, 255] and out[0, 0].tolist() == [100, 100, 100]
    out_np = np.asarray(load_image(arr16))  # numpy uint16 follows the same rule
    assert out_np[0, 0].tolist() == [100, 100, 100]


def test_decompression_bomb_is_refused_before_decoding():
    big = Image.new("L", (3000, 2000))
    data = _png_bytes(big)
    with pytest.raises(ImageLoadError, match="exceeds the limit"):
        load_image(data, name="bomb.png", max_pixels=1_000_000)
    assert load_image(data, max_pixels=10_000_000).size == (3000, 2000)


def test_truncated_file_names_item_and_reason(tmp_path):
    data = _png_bytes(Image.fromarray(_rgb(64, 64)), "JPEG")
    p = tmp_path / "cut.jpg"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError) as info:
        load_image(p)
    assert "cut.jpg" in str(info.value) and "truncated" in str(info.value)


@pytest.mark.parametrize(
    "content,reason",
    [(b"hello, this is text", "not an image"), (b"", "empty file")],
)
def test_non_image_files(tmp_path, content, reason):
    p = tmp_path / "notes.png"
    p.write_bytes(content)
    with pytest.raises(ImageLoadError, match=reason) as info:
        load_image(p)
    assert "notes.png" in str(info.value)


def test_missing_and_folder(tmp_path):
    with pytest.raises(ImageLoadError, match="does not exist"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageLoadError, match="folder"):
        load_image(tmp_path)


@pytest.mark.parametrize(
    "item,reason",
    [
        (np.zeros((4, 4, 5), np.uint8), "channels"),
        (np.zeros((2, 4, 4, 3), np.uint8), "expected HW"),
        (np.full((4, 4, 3), 255.0, np.float32), "expected 0–1"),
        (np.full((4, 4, 3), np.nan, np.float32), "NaN"),
        (torch.zeros(5, 4, 4), "CHW"),
        (np.zeros((0, 4, 3), np.uint8), "empty image"),
        (12345, "unsupported type"),
    ],
)
def test_bad_arrays_and_types(item, reason):
    with pytest.raises(ImageLoadError, match=reason):
        load_image(item, name="sample-7/edited")


def test_error_names_given_item():
    with pytest.raises(ImageLoadError) as info:
        load_image(b"xx", name="group3/cand5.png")
    assert info.value.item == "group3/cand5.png"


def test_map_images_keeps_order_on_the_pool_and_serially(monkeypatch):
    from spatialreward.images import map_images

    items = list(range(40))
    assert map_images(lambda x: x * x, items) == [x * x for x in items]
    monkeypatch.setenv("SPATIALREWARD_IMAGE_THREADS", "1")
    assert map_images(lambda x: -x, items) == [-x for x in items]


def test_map_images_works_in_a_forked_child_after_the_parent_used_the_pool():
    import multiprocessing as mp

    from spatialreward.images import map_images

    assert map_images(lambda x: x + 1, list(range(16)))[-1] == 16  # the parent's pool exists now
    ctx = mp.get_context("fork")
    with ctx.Pool(1) as pool:
        result = pool.apply_async(_square_all_on_the_pool, (list(range(16)),))
        assert result.get(timeout=30) == [x * x for x in range(16)]  # hangs (times out) with a stale pool


def _square_all_on_the_pool(items):
    from spatialreward.images import map_images

    return map_images(lambda x: x * x, items)
