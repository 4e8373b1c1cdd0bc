"""Image bytes <-> uint8 arrays. Pools store PNG (lossless) or JPEG bytes; pipelines work on HWC uint8."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from raydm2.errors import RayDM2Error


def encode_png(pixels: np.ndarray) -> bytes:
    """HW (grey) or HWC (RGB) uint8 -> PNG bytes. Lossless, so decoding gives back the exact pixels."""
    if pixels.dtype != np.uint8:
        raise RayDM2Error(f"images must be uint8, got {pixels.dtype}")
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3):
        raise RayDM2Error(f"images must be HxW or HxWx3, got shape {pixels.shape}")
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


class UndecodableImage(ValueError):
    """Bytes that are not a readable image of the pool's size and channel count."""


def decode(data: bytes | None, size: int, channels: int) -> np.ndarray:
    """Image bytes -> HxWxC uint8 with the project's size and channels, or UndecodableImage.

    A wrong size is an error rather than a silent resize: resizing would change what the model sees compared
    with training, and a wrong-sized image usually means the wrong pool was attached.
    """
    if not data:
        raise UndecodableImage("empty image bytes")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            mode = "L" if channels == 1 else "RGB"
            if channels == 1 and img.mode not in ("L", "1", "I;16", "I", "P", "LA"):
                raise UndecodableImage(f"image mode {img.mode} is not greyscale")
            arr = np.asarray(img.convert(mode))
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise UndecodableImage(f"cannot decode image: {exc}") from exc
    if arr.shape[0] != size or arr.shape[1] != size:
        raise UndecodableImage(f"image is {arr.shape[1]}x{arr.shape[0]}, project expects {size}x{size}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr
