"""Image bytes <-> uint8 arrays <-> model inputs. Pools store PNG (lossless) or JPEG bytes; pipelines work on HWC
uint8, and models take NCHW float tensors of [0,1] pixels."""

from __future__ import annotations

import io

import numpy as np
import torch
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


def decode_batch(batch: dict, size: int, channels: int) -> dict:
    """A batch of (`id`, `image` bytes) -> (`id`, `pixels` NHWC uint8, `ok`). Undecodable images stay as rows with
    `ok = 0` and zero pixels, so they can be counted, and are never given to a model."""
    images = batch["image"]
    n = len(images)
    pixels = np.zeros((n, size, size, channels), np.uint8)
    ok = np.ones(n, np.uint8)
    for i, data in enumerate(images):
        try:
            pixels[i] = decode(data, size, channels)
        except UndecodableImage:
            ok[i] = 0
    return {"id": batch["id"], "pixels": pixels, "ok": ok}


def unit_float(x: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [0,1]; float input is taken to be in [0,1] already."""
    return x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)


def to_tensor(nhwc: np.ndarray) -> torch.Tensor:
    """NHWC uint8 or [0,1] float -> NCHW float32 tensor in [0,1], what every model takes."""
    return torch.from_numpy(np.ascontiguousarray(unit_float(nhwc).transpose(0, 3, 1, 2)))
