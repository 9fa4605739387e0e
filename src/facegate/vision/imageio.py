"""Untrusted bytes to RGB arrays: base64, decoding, EXIF orientation, size and pixel limits.

Everything that comes from a client passes through here before any model sees it, so every
failure is a ``InvalidImageError`` / ``ImageTooLargeError`` naming the field it came from.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import threading
import warnings
from contextvars import ContextVar
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from facegate.errors import BusyError, ImageTooLargeError, InvalidImageError

_DATA_URL = re.compile(r"^data:image/[\w.+-]+;base64,", re.IGNORECASE)
_WS = re.compile(r"\s+")


@dataclass(frozen=True)
class ImageLimits:
    max_pixels: int = 40_000_000
    min_side: int = 24
    #: Pixels decoded in full at most. A JPEG beyond is decoded reduced (libjpeg's 1/2, 1/4, 1/8 scales:
    #: PIL's draft mode, cheaper than a full decode); any other format beyond is refused from its header
    #: (a 6000x6000 PNG is 105 kB and 108 MB decoded). Detection sees at most ``max_detect_side`` anyway.
    decode_pixels: int = 8_500_000  # a 4K frame (3840x2160) whole; a 12 MP phone photo at 1/2


class PixelPool:
    """Decoded pixels held by a whole server's requests at once (each request's are given back when it ends)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        with self._lock:
            if self.used + n > self.total:
                return False
            self.used += n
            return True

    def give(self, n: int) -> None:
        with self._lock:
            self.used = max(0, self.used - n)


class RequestPixels:
    """One request's pixel budget: ``limit`` decoded pixels in all its images, drawn from ``pool``."""

    def __init__(self, limit: int, pool: PixelPool | None = None) -> None:
        self.limit = limit
        self.pool = pool
        self.used = 0
        self._lock = threading.Lock()

    def charge(self, n: int, field: str) -> None:
        """Count ``n`` pixels about to be decoded for ``field``: 413 past the request's budget, 503 past the server's."""
        with self._lock:
            if self.used + n > self.limit:
                raise ImageTooLargeError(
                    f"{field}: this request's images would be {(self.used + n) / 1e6:.1f} megapixels decoded; "
                    f"the limit per request is {self.limit / 1e6:.1f} (send fewer or smaller images)",
                    field=field,
                )
            if self.pool is not None and not self.pool.take(n):
                raise BusyError(
                    f"the server is decoding as many pixels as it may at once ({self.pool.total / 1e6:.0f} megapixels); retry shortly"
                )
            self.used += n

    def release(self) -> None:
        """At the request's end: its pixels go back to the server's pool."""
        with self._lock:
            if self.pool is not None:
                self.pool.give(self.used)
            self.used = 0


#: The budget of the request being served (set by the API for each request; none elsewhere).
request_pixels: ContextVar[RequestPixels | None] = ContextVar("facegate_request_pixels", default=None)


def _reduced_size(img: Image.Image, budget: int, field: str) -> tuple[int, int]:
    """The size ``img`` will be decoded at: a JPEG over ``budget`` pixels at the smallest libjpeg scale
    that fits (draft mode), anything else as it is, or refused when over the budget."""
    w, h = img.size
    if w * h <= budget:
        return w, h
    if img.format == "JPEG":
        for scale in (2, 4, 8):
            sw, sh = -(-w // scale), -(-h // scale)
            if sw * sh <= budget or scale == 8:
                img.draft(img.mode, (sw, sh))
                return img.size
    raise ImageTooLargeError(
        f"{field}: {w}x{h} is {w * h / 1e6:.1f} megapixels; a {img.format or 'non-JPEG'} image is decoded in full and may have "
        f"at most {budget / 1e6:.1f} (a JPEG is decoded reduced): send a JPEG, or a smaller image",
        field=field,
    )


def b64_to_bytes(text: str, *, field: str = "image") -> bytes:
    """Strict base64 (standard or URL-safe alphabet), optionally behind a ``data:image/...;base64,`` prefix."""
    if not isinstance(text, str):
        raise InvalidImageError(f"{field}: expected a base64 string", field=field)
    if text:  # plain standard base64, as the reference clients send it: decoded as it is (5x faster)
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            pass  # a data URL, whitespace, the URL-safe alphabet or missing padding: normalised below
    body = _WS.sub("", _DATA_URL.sub("", text.strip(), count=1))
    if not body:
        raise InvalidImageError(f"{field}: empty image data", field=field)
    if "-" in body or "_" in body:
        body = body.replace("-", "+").replace("_", "/")
    body += "=" * (-len(body) % 4)
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidImageError(f"{field}: not valid base64 ({exc})", field=field) from None


def decode_image(data: bytes, limits: ImageLimits = ImageLimits(), *, field: str = "image") -> np.ndarray:
    """Decode to an HxWx3 uint8 RGB array, upright per EXIF.

    Dimensions are checked from the header before pixels are decoded, so a decompression bomb
    costs nothing; a large JPEG is decoded reduced, and the pixels count against the request's
    budget (``request_pixels``) before they are decoded.
    """
    if not data:
        raise InvalidImageError(f"{field}: empty image data", field=field)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > limits.max_pixels:
                raise ImageTooLargeError(
                    f"{field}: {w}x{h} is {w * h / 1e6:.1f} megapixels; the limit is {limits.max_pixels / 1e6:.1f}",
                    field=field,
                )
            if min(w, h) < limits.min_side:
                raise InvalidImageError(
                    f"{field}: {w}x{h} is too small; each side must be at least {limits.min_side} px", field=field
                )
            dw, dh = _reduced_size(img, limits.decode_pixels, field)
            budget = request_pixels.get()
            if budget is not None:
                budget.charge(dw * dh, field)
            img.load()
            img = ImageOps.exif_transpose(img)
            if img.mode != "RGB":
                img = _to_rgb(img)
            arr = np.asarray(img, dtype=np.uint8)
    except (ImageTooLargeError, InvalidImageError, BusyError):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # PIL's own bomb guard fires in Image.open, from the header, before our pixel check above.
        raise ImageTooLargeError(f"{field}: too many pixels ({exc})", field=field) from None
    except UnidentifiedImageError as exc:
        raise InvalidImageError(f"{field}: not a decodable image ({type(exc).__name__})", field=field) from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise InvalidImageError(f"{field}: corrupt or truncated image ({exc})", field=field) from None
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise InvalidImageError(f"{field}: unsupported pixel layout {arr.shape}", field=field)
    return np.ascontiguousarray(arr)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(img, dtype=np.float64)
        hi = a.max() if a.size else 1.0
        a = (a / (hi if hi > 0 else 1.0) * 255.0).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")


def load_b64_image(text: str, limits: ImageLimits = ImageLimits(), *, field: str = "image") -> np.ndarray:
    return decode_image(b64_to_bytes(text, field=field), limits, field=field)


def encode_jpeg(rgb: np.ndarray, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def read_image_file(path: str, limits: ImageLimits = ImageLimits()) -> np.ndarray:
    with open(path, "rb") as fh:
        return decode_image(fh.read(), limits, field=str(path))
