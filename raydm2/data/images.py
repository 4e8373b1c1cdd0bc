"""Image bytes <-> uint8 arrays <-> model inputs. Pools store PNG (lossless) or JPEG bytes; pipelines work on HWC
uint8, and models take NCHW float tensors of [0,1] pixels."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

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
    """Bytes that are not a readable image for the project: corrupt, too large, or of a kind it refuses."""


RESIZE_MODES = ("crop", "pad", "stretch", "none")
# Refused from the header, before any decoding: 8192 x 8192 (a 64-megapixel photo fits, a decompression bomb not).
DEFAULT_MAX_PIXELS = 8192 * 8192


@dataclass(frozen=True)
class ImageSpec:
    """What the model sees: `size` x `size` pixels with `channels` (1 grey, 3 RGB), from any image by `resize`:
    `crop` (shorter side to `size`, antialiased, then the centre), `pad` (the whole image, letterboxed with black),
    `stretch` (both sides to `size`), or `none` (any other size is refused)."""

    size: int
    channels: int
    resize: str = "crop"
    max_pixels: int = DEFAULT_MAX_PIXELS


# Modes Pillow decodes to, by what raydm2 does with them. Grey ones feed a grey project as they are and an RGB
# project with the grey value in every channel; colour ones feed only RGB projects (a grey project refuses them:
# colour usually means the wrong pool). Transparent pixels are composited over white.
GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
SIXTEEN_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}


def decode(data: bytes | None, spec: ImageSpec) -> np.ndarray:
    """Image bytes of any format Pillow reads -> `spec.size` x `spec.size` x `spec.channels` uint8, or
    UndecodableImage. EXIF orientation is applied; a GIF or TIFF gives its first frame; 16-bit grey is scaled to
    8 bits (value · 255 / 65535, rounded); the size is checked from the header before anything is decoded."""
    if not data:
        raise UndecodableImage("empty image bytes")
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width * height > spec.max_pixels:
                raise UndecodableImage(f"image header says {width}x{height}, over the limit of {spec.max_pixels} "
                                       "pixels (image.max_pixels)")
            if spec.resize != "none":
                img.draft(img.mode, (spec.size, spec.size))  # JPEG: decode at the smallest scale that is enough
            img = ImageOps.exif_transpose(img)
            img = _convert(img, spec.channels)
            img = _fit(img, spec)
            arr = np.asarray(img)
    except UndecodableImage:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise UndecodableImage(f"cannot decode image: {exc}") from None
    if arr.shape[0] != spec.size or arr.shape[1] != spec.size:
        raise UndecodableImage(f"image is {arr.shape[1]}x{arr.shape[0]}, project expects {spec.size}x{spec.size} "
                               "(image.resize: none)")
    return arr[:, :, None] if arr.ndim == 2 else arr


def _convert(img: Image.Image, channels: int) -> Image.Image:
    if img.mode in SIXTEEN_BIT_MODES:
        wide = np.clip(np.asarray(img, dtype=np.int64), 0, 65535)
        img = Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8), "L")
    elif img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("LA", "La", "PA", "RGBA", "RGBa"):
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        grey = img.mode in ("LA", "La")
        img = Image.alpha_composite(white, img.convert("RGBA"))
        img = img.convert("L" if grey else "RGB")
    if channels == 1:
        if img.mode not in GREY_MODES:
            raise UndecodableImage(f"image mode {img.mode} is colour and the project is grey (image.channels: 1)")
        return img.convert("L")
    return img.convert("RGB")


def _fit(img: Image.Image, spec: ImageSpec) -> Image.Image:
    target = (spec.size, spec.size)
    if img.size == target or spec.resize == "none":
        return img
    if spec.resize == "crop":
        return ImageOps.fit(img, target, method=Image.Resampling.BILINEAR)
    if spec.resize == "pad":
        return ImageOps.pad(img, target, method=Image.Resampling.BILINEAR, color=0)
    return img.resize(target, Image.Resampling.BILINEAR)


def decode_batch(batch: dict, spec: ImageSpec) -> dict:
    """A batch of (`id`, `image` bytes) -> (`id`, `pixels` NHWC uint8, `ok`). Undecodable images stay as rows with
    `ok = 0` and zero pixels, so they can be counted, and are never given to a model."""
    images = batch["image"]
    n = len(images)
    pixels = np.zeros((n, spec.size, spec.size, spec.channels), np.uint8)
    ok = np.ones(n, np.uint8)
    for i, data in enumerate(images):
        try:
            pixels[i] = decode(data, spec)
        except UndecodableImage:
            ok[i] = 0
    return {"id": batch["id"], "pixels": pixels, "ok": ok}


def unit_float(x: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [0,1]; float input is taken to be in [0,1] already."""
    return x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)


def to_tensor(nhwc: np.ndarray) -> torch.Tensor:
    """NHWC uint8 or [0,1] float -> NCHW float32 tensor in [0,1], what every model takes."""
    return torch.from_numpy(np.ascontiguousarray(unit_float(nhwc).transpose(0, 3, 1, 2)))
