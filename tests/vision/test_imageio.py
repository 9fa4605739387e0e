"""facegate.vision.imageio: strict base64, decoding to upright RGB, and size limits checked from the header."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from facegate.errors import FaceGateError, ImageTooLargeError, InvalidImageError
from facegate.vision.imageio import ImageLimits, b64_to_bytes, decode_image, encode_jpeg, load_b64_image, read_image_file


# ----------------------------------------------------------------------------- helpers
def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _two_tone(h: int = 40, w: int = 60) -> np.ndarray:
    """Left half red, right half blue: orientation and channel order are both visible."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 2] = (255, 0, 0)
    a[:, w // 2 :] = (0, 0, 255)
    return a


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG whose IHDR claims w x h RGB but whose pixel data is a few bytes: decoding it would fail."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


def _assert_rgb(arr: np.ndarray, h: int, w: int) -> None:
    assert isinstance(arr, np.ndarray)
    assert arr.shape == (h, w, 3)
    assert arr.dtype == np.uint8
    assert arr.flags["C_CONTIGUOUS"]


def _close(px, rgb, tol=12) -> bool:
    return bool(np.all(np.abs(np.asarray(px, int) - np.asarray(rgb, int)) <= tol))


# ----------------------------------------------------------------------------- base64
PAYLOAD = bytes(range(256)) * 3 + b"\xfb\xff\xfe"  # contains bytes that encode to '+' and '/'


def test_b64_standard_roundtrip():
    text = base64.b64encode(PAYLOAD).decode()
    assert "+" in text or "/" in text
    assert b64_to_bytes(text) == PAYLOAD


@pytest.mark.parametrize(
    "prefix", ["data:image/jpeg;base64,", "data:image/png;base64,", "DATA:IMAGE/WEBP;BASE64,", "data:image/svg+xml;base64,"]
)
def test_b64_data_url_prefix_accepted(prefix):
    assert b64_to_bytes(prefix + base64.b64encode(PAYLOAD).decode()) == PAYLOAD


def test_b64_urlsafe_alphabet_accepted():
    text = base64.urlsafe_b64encode(PAYLOAD).decode()
    assert "-" in text or "_" in text
    assert b64_to_bytes(text) == PAYLOAD


def test_b64_missing_padding_accepted():
    text = base64.b64encode(b"abcd1").decode()
    assert text.endswith("=")
    assert b64_to_bytes(text.rstrip("=")) == b"abcd1"


def test_b64_whitespace_and_newlines_ignored():
    text = base64.encodebytes(PAYLOAD).decode()  # MIME style: a newline every 76 characters
    assert "\n" in text
    assert b64_to_bytes("  \n" + text.replace("\n", "\r\n ") + "\t ") == PAYLOAD


@pytest.mark.parametrize(
    "bad",
    [
        "abc$def",
        "QUJD*REVG",
        "QUJD REVG!",
        "data:image/png;base64,QUJD%REVG",
        "data:text/plain;base64,QUJDREVG",  # only image data URLs are understood
        "héllo==",
        "A",  # one character can never be base64
    ],
)
def test_b64_invalid_characters_name_the_field(bad):
    with pytest.raises(InvalidImageError) as ei:
        b64_to_bytes(bad, field="image_b64")
    assert ei.value.field == "image_b64"
    assert "image_b64" in str(ei.value)
    assert ei.value.code == "invalid_image"
    assert isinstance(ei.value, FaceGateError)


@pytest.mark.parametrize("empty", ["", "   ", "\n\t", "data:image/png;base64,", "data:image/png;base64,  "])
def test_b64_empty_is_invalid(empty):
    with pytest.raises(InvalidImageError) as ei:
        b64_to_bytes(empty, field="probe")
    assert ei.value.field == "probe"


@pytest.mark.parametrize("not_text", [None, b"QUJD", 123, ["QUJD"]])
def test_b64_non_string_is_invalid(not_text):
    with pytest.raises(InvalidImageError) as ei:
        b64_to_bytes(not_text, field="img")
    assert ei.value.field == "img"


def test_load_b64_image_end_to_end():
    png = _encode(Image.fromarray(_two_tone()), "PNG")
    out = load_b64_image("data:image/png;base64," + base64.b64encode(png).decode(), field="x")
    _assert_rgb(out, 40, 60)
    np.testing.assert_array_equal(out, _two_tone())


def test_load_b64_image_bad_bytes_name_the_field():
    with pytest.raises(InvalidImageError) as ei:
        load_b64_image(base64.b64encode(b"definitely not an image").decode(), field="photo")
    assert ei.value.field == "photo"


# ----------------------------------------------------------------------------- formats
def test_decode_png_lossless():
    src = np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    out = decode_image(_encode(Image.fromarray(src), "PNG"))
    _assert_rgb(out, 50, 70)
    np.testing.assert_array_equal(out, src)


def test_decode_jpeg():
    src = _two_tone(48, 64)
    out = decode_image(_encode(Image.fromarray(src), "JPEG", quality=95))
    _assert_rgb(out, 48, 64)
    assert _close(out[24, 8], (255, 0, 0))
    assert _close(out[24, 56], (0, 0, 255))


def test_decode_webp_lossless():
    src = np.random.default_rng(2).integers(0, 256, (32, 40, 3), dtype=np.uint8)
    out = decode_image(_encode(Image.fromarray(src), "WEBP", lossless=True))
    _assert_rgb(out, 32, 40)
    np.testing.assert_array_equal(out, src)


def test_decode_webp_lossy():
    out = decode_image(_encode(Image.fromarray(_two_tone(48, 64)), "WEBP", quality=90))
    _assert_rgb(out, 48, 64)
    assert _close(out[24, 8], (255, 0, 0), tol=30)
    assert _close(out[24, 56], (0, 0, 255), tol=30)


def test_encode_jpeg_roundtrip():
    src = _two_tone(48, 64)
    data = encode_jpeg(src)
    assert data[:3] == b"\xff\xd8\xff"
    out = decode_image(data)
    _assert_rgb(out, 48, 64)
    assert _close(out[24, 8], (255, 0, 0))


def test_read_image_file_uses_path_as_field(tmp_path):
    good = tmp_path / "good.png"
    good.write_bytes(_encode(Image.fromarray(_two_tone()), "PNG"))
    np.testing.assert_array_equal(read_image_file(str(good)), _two_tone())
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 nope")
    with pytest.raises(InvalidImageError) as ei:
        read_image_file(str(bad))
    assert ei.value.field == str(bad)


# ----------------------------------------------------------------------------- EXIF orientation
@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_rotated_jpeg_comes_out_upright(orientation):
    src = _two_tone(40, 60)  # stored landscape: red left, blue right
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _encode(Image.fromarray(src), "JPEG", quality=95, exif=exif.tobytes())
    assert Image.open(io.BytesIO(data)).size == (60, 40)  # stored pixels are not rotated
    out = decode_image(data)
    _assert_rgb(out, 60, 40)  # height and width swapped
    top, bottom = out[3, 20], out[-4, 20]
    if orientation == 6:  # rotate 90 degrees clockwise to display: the left (red) side ends up on top
        assert _close(top, (255, 0, 0)) and _close(bottom, (0, 0, 255))
    else:  # 8: counter-clockwise: the left side ends up at the bottom
        assert _close(top, (0, 0, 255)) and _close(bottom, (255, 0, 0))


def test_exif_orientation_1_unchanged():
    exif = Image.Exif()
    exif[0x0112] = 1
    out = decode_image(_encode(Image.fromarray(_two_tone()), "JPEG", quality=95, exif=exif.tobytes()))
    _assert_rgb(out, 40, 60)
    assert _close(out[20, 3], (255, 0, 0))


# ----------------------------------------------------------------------------- pixel modes
def test_rgba_composited_on_white():
    a = np.zeros((30, 40, 4), np.uint8)
    a[..., 0] = 255
    a[:, 20:, 3] = 255  # left half transparent, right half opaque red
    out = decode_image(_encode(Image.fromarray(a, "RGBA"), "PNG"))
    _assert_rgb(out, 30, 40)
    np.testing.assert_array_equal(out[:, :20], 255)
    np.testing.assert_array_equal(out[:, 20:], np.broadcast_to([255, 0, 0], (30, 20, 3)))


def test_grayscale_to_rgb():
    g = np.tile(np.arange(0, 250, 5, dtype=np.uint8), (30, 1))  # 30 x 50 ramp
    out = decode_image(_encode(Image.fromarray(g, "L"), "PNG"))
    _assert_rgb(out, 30, 50)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], g)


def test_grayscale_alpha_to_rgb():
    la = Image.fromarray(np.full((30, 30), 100, np.uint8), "L").convert("LA")
    out = decode_image(_encode(la, "PNG"))
    _assert_rgb(out, 30, 30)
    assert np.all(out == 100)


def test_sixteen_bit_grayscale_to_rgb():
    g16 = (np.tile(np.arange(64, dtype=np.uint32), (32, 1)) * 1000).astype(np.uint16)  # 0 .. 63000
    data = _encode(Image.fromarray(g16), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")  # really a 16-bit image
    out = decode_image(data)
    _assert_rgb(out, 32, 64)
    row = out[0, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255  # full range used, not clipped to all-white
    assert np.all(np.diff(row) >= 0) and len(np.unique(row)) > 32  # the ramp survives
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])


def test_palette_to_rgb():
    p = Image.fromarray(_two_tone()).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    data = _encode(p, "PNG")
    assert Image.open(io.BytesIO(data)).mode == "P"
    out = decode_image(data)
    _assert_rgb(out, 40, 60)
    assert _close(out[20, 3], (255, 0, 0), tol=2) and _close(out[20, 57], (0, 0, 255), tol=2)


def test_palette_with_transparency_composited_on_white():
    p = Image.new("P", (30, 30), 1)
    p.putpalette([0, 255, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    p.paste(0, (0, 0, 15, 30))  # left half: index 0, declared transparent
    data = _encode(p, "PNG", transparency=0)
    assert "transparency" in Image.open(io.BytesIO(data)).info
    out = decode_image(data)
    _assert_rgb(out, 30, 30)
    np.testing.assert_array_equal(out[:, :15], 255)
    np.testing.assert_array_equal(out[:, 15:], np.broadcast_to([255, 0, 0], (30, 15, 3)))


def test_cmyk_jpeg_to_rgb():
    cmyk = Image.fromarray(_two_tone(48, 64)).convert("CMYK")
    data = _encode(cmyk, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = decode_image(data)
    _assert_rgb(out, 48, 64)
    assert _close(out[24, 8], (255, 0, 0), tol=20)
    assert _close(out[24, 56], (0, 0, 255), tol=20)


def test_bilevel_to_rgb():
    b = Image.fromarray(_two_tone()).convert("L").point(lambda v: 255 if v > 50 else 0).convert("1")
    out = decode_image(_encode(b, "PNG"))
    _assert_rgb(out, 40, 60)
    assert set(np.unique(out).tolist()) <= {0, 255}


def test_animated_gif_gives_first_frame():
    frames = [Image.new("RGB", (40, 40), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert getattr(Image.open(io.BytesIO(buf.getvalue())), "n_frames", 1) == 3
    out = decode_image(buf.getvalue())
    _assert_rgb(out, 40, 40)
    assert _close(out[20, 20], (255, 0, 0), tol=2)


# ----------------------------------------------------------------------------- bad input
def _jpeg_bytes() -> bytes:
    rng = np.random.default_rng(3)
    return _encode(Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)), "JPEG", quality=90)


@pytest.mark.parametrize("keep", [0.5, 0.1])
def test_truncated_jpeg_is_invalid(keep):
    data = _jpeg_bytes()
    with pytest.raises(InvalidImageError) as ei:
        decode_image(data[: int(len(data) * keep)], field="img")
    assert ei.value.field == "img"


def test_truncated_png_is_invalid():
    data = _encode(Image.fromarray(np.random.default_rng(4).integers(0, 256, (80, 80, 3), dtype=np.uint8)), "PNG")
    with pytest.raises(InvalidImageError):
        decode_image(data[: len(data) // 2])


def test_zero_bytes_is_invalid():
    with pytest.raises(InvalidImageError) as ei:
        decode_image(b"", field="f")
    assert ei.value.field == "f"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_bytes_are_invalid(seed):
    data = np.random.default_rng(seed).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    with pytest.raises(InvalidImageError) as ei:
        decode_image(data, field="f")
    assert ei.value.field == "f"


def test_text_is_invalid():
    with pytest.raises(InvalidImageError):
        decode_image(b"<svg xmlns='http://www.w3.org/2000/svg' width='100' height='100'/>")


@pytest.mark.parametrize("size", [(1, 1), (23, 100), (100, 5)])
def test_too_small_is_invalid(size):
    data = _encode(Image.new("RGB", size, (9, 9, 9)), "PNG")
    with pytest.raises(InvalidImageError) as ei:
        decode_image(data, field="face")
    assert ei.value.field == "face"
    assert "small" in str(ei.value)


def test_min_side_boundary_accepted():
    out = decode_image(_encode(Image.new("RGB", (24, 24), (9, 9, 9)), "PNG"))
    _assert_rgb(out, 24, 24)


def test_custom_limits_apply():
    data = _encode(Image.new("RGB", (100, 100), (9, 9, 9)), "PNG")
    _assert_rgb(decode_image(data, ImageLimits(max_pixels=10_000, min_side=100)), 100, 100)
    with pytest.raises(ImageTooLargeError):
        decode_image(data, ImageLimits(max_pixels=9_999))
    with pytest.raises(InvalidImageError):
        decode_image(data, ImageLimits(min_side=101))


def test_large_real_png_refused_from_header():
    # 8000 x 8000 = 64 MP, one colour: the file is tiny, decoding it would cost 192 MB.
    big = _encode(Image.new("1", (8000, 8000), 1), "PNG")
    assert len(big) < 200_000
    with pytest.raises(ImageTooLargeError) as ei:
        decode_image(big, field="image")
    assert ei.value.field == "image"
    assert ei.value.code == "image_too_large"
    assert "8000x8000" in str(ei.value)


@pytest.mark.parametrize("w,h", [(8000, 8000), (10000, 10000), (20000, 20000), (65535, 65535), (100_000, 1000)])
def test_huge_header_refused_without_decoding(w, h):
    # The pixel data is bogus, so getting ImageTooLargeError (not a "corrupt" InvalidImageError)
    # shows the limit is applied from the header, before any decoding.
    data = _png_header_only(w, h)
    with pytest.raises(ImageTooLargeError) as ei:
        decode_image(data, field="image")
    assert ei.value.field == "image"


def test_header_only_png_within_limits_is_invalid_not_too_large():
    with pytest.raises(InvalidImageError):
        decode_image(_png_header_only(100, 100))


# ----------------------------------------------------------------------------- pixel budgets (issue 19, finding 5)
def _gradient(h: int, w: int) -> np.ndarray:
    """Smooth content (a small JPEG even when huge): red rises left to right, green top to bottom."""
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None].repeat(w, 1)
    return np.stack([x, y, np.full_like(x, 128)], axis=2).astype(np.uint8)


def test_a_large_jpeg_is_decoded_reduced():
    """6000x4000 (24 MP) decodes at libjpeg's 1/2 scale (6 MP), not in full: the same picture, smaller."""
    data = _encode(Image.fromarray(_gradient(4000, 6000)), "JPEG", quality=90)
    out = decode_image(data)
    _assert_rgb(out, 2000, 3000)
    assert _close(out[1000, 5], (0, 128, 128), 12) and _close(out[1000, -5], (255, 128, 128), 12)
    assert out.shape[0] * out.shape[1] <= ImageLimits().decode_pixels
    # A larger budget decodes it whole; a smaller one at 1/4 or 1/8.
    assert decode_image(data, ImageLimits(decode_pixels=24_000_000)).shape[:2] == (4000, 6000)
    assert decode_image(data, ImageLimits(decode_pixels=1_000_000)).shape[:2] == (500, 750)


def test_a_reduced_jpeg_is_still_turned_upright():
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _encode(Image.fromarray(_gradient(4000, 6000)), "JPEG", quality=90, exif=exif.tobytes())
    _assert_rgb(decode_image(data), 3000, 2000)


def test_a_large_png_is_refused_from_its_header_not_decoded():
    """The attack: 6000x6000 PNG, 105 kB sent, 108 MB decoded (5.3 s for a /v1/verify with two)."""
    data = _encode(Image.new("L", (6000, 6000), 0), "PNG")
    assert len(data) < 200_000
    with pytest.raises(ImageTooLargeError) as ei:
        decode_image(data, field="image_a")
    assert ei.value.field == "image_a" and "6000x6000" in ei.value.message and "JPEG" in ei.value.message
    small = _encode(Image.new("L", (3840, 2160), 0), "PNG")  # a 4K frame is decoded whole
    _assert_rgb(decode_image(small), 2160, 3840)


def test_request_and_server_pixel_budgets():
    from facegate.errors import BusyError
    from facegate.vision.imageio import PixelPool, RequestPixels, request_pixels

    img = _encode(Image.fromarray(_gradient(400, 500)), "PNG")  # 0.2 MP
    pool = PixelPool(500_000)
    first, second = RequestPixels(300_000, pool), RequestPixels(1_000_000, pool)
    token = request_pixels.set(first)
    try:
        decode_image(img)
        with pytest.raises(ImageTooLargeError, match="limit per request"):  # 0.4 MP > 0.3 MP
            decode_image(img, field="images[1]")
    finally:
        request_pixels.reset(token)
    token = request_pixels.set(second)
    try:
        decode_image(img)
        with pytest.raises(BusyError):  # 0.2 + 0.2 + 0.2 MP > the server's 0.5 MP
            decode_image(img)
        first.release()
        decode_image(img)  # room again
    finally:
        request_pixels.reset(token)
        second.release()
    assert pool.used == 0
    decode_image(img)  # outside a request: no budget
