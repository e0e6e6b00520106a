"""CLIP image preprocessing as pure functions: decode, orient, convert to RGB, resize, centre crop, normalise.

The same steps, in the same order and with the same rounding, as OpenAI CLIP's ``preprocess`` and
``transformers.CLIPImageProcessor``: shortest side to 224 with PIL's bicubic filter (the long side
truncated, ``int(224 * long / short)``), a centre crop with the offset rounded down, pixels scaled to
[0, 1], then per-channel mean and standard deviation. No torch here: numpy in, numpy out.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from aios_memory.errors import EmptyContentError, InvalidInputError, UnsupportedMediaError

IMAGE_SIZE = 224  # ViT-B/32 input side, pixels
RESAMPLE = Image.Resampling.BICUBIC
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's RGB pixel statistics
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
ALPHA_BACKGROUND = (255, 255, 255, 255)  # transparency is composited onto white, as transformers does
MAX_PIXELS = 178_956_970  # PIL's own decompression-bomb limit (2x its warning threshold)

ImageInput = Any  # bytes-like, pathlib.Path, PIL.Image.Image or a (H, W[, 3|4]) uint8 numpy array


def load_image(item: ImageInput) -> Image.Image:
    """A PIL image from encoded bytes (PNG, JPEG, ...), a file path, a numpy array or a PIL image."""
    if isinstance(item, Image.Image):
        return item
    if isinstance(item, (bytes, bytearray, memoryview)):
        data = bytes(item)
        if not data:
            raise EmptyContentError("image content is empty (0 bytes)")
        try:
            img = Image.open(io.BytesIO(data))
            img.load()
        except (
            UnidentifiedImageError,
            Image.DecompressionBombError,
            OSError,
            SyntaxError,
            ValueError,
        ) as exc:
            raise UnsupportedMediaError(f"cannot decode the image bytes ({exc})") from exc
        return img
    if isinstance(item, Path):
        return load_image(item.read_bytes())
    if isinstance(item, np.ndarray):
        if (
            item.dtype != np.uint8
            or item.ndim not in (2, 3)
            or (item.ndim == 3 and item.shape[2] not in (3, 4))
        ):
            raise InvalidInputError(
                f"an image array must be uint8 of shape (H, W), (H, W, 3) or (H, W, 4); got {item.dtype} {item.shape}"
            )
        return Image.fromarray(item)
    raise InvalidInputError(
        f"cannot read an image from {type(item).__name__}; give encoded bytes, a pathlib.Path, "
        "a PIL image or a uint8 numpy array"
    )


def to_rgb(img: Image.Image) -> Image.Image:
    """Upright RGB: EXIF orientation applied; palette, grayscale, CMYK converted; alpha composited on white."""
    if img.width * img.height == 0:
        raise InvalidInputError(f"image has no pixels ({img.width}x{img.height})")
    if img.width * img.height > MAX_PIXELS:
        raise InvalidInputError(f"image is {img.width}x{img.height}; the limit is {MAX_PIXELS} pixels")
    img = ImageOps.exif_transpose(img)  # a new, upright image (or a copy) when the EXIF says rotated
    if "A" in img.getbands() or img.info.get("transparency") is not None:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND)
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def resized_size(width: int, height: int, size: int = IMAGE_SIZE) -> tuple[int, int]:
    """(width, height) with the shortest side ``size`` and the aspect ratio kept, the long side truncated."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def resize_and_crop(img: Image.Image, size: int = IMAGE_SIZE) -> np.ndarray:
    """RGB image -> (size, size, 3) uint8: bicubic resize of the shortest side, then a centre crop."""
    from aios_memory.errors import InputTooLargeError
    from aios_memory.modality import MAX_IMAGE_ASPECT

    if max(img.width, img.height) > MAX_IMAGE_ASPECT * max(1, min(img.width, img.height)):
        raise InputTooLargeError(  # the long side would grow with the short one: a 15 GB array for 1x100000
            f"image is {img.width}x{img.height}; the aspect-ratio limit is {MAX_IMAGE_ASPECT}:1"
        )
    w, h = resized_size(img.width, img.height, size)
    arr = np.asarray(img.resize((w, h), resample=RESAMPLE))  # (h, w, 3) uint8
    top, left = (h - size) // 2, (w - size) // 2
    return arr[top : top + size, left : left + size]


def normalize(pixels: np.ndarray) -> np.ndarray:
    """(S, S, 3) uint8 -> (3, S, S) float32: scaled to [0, 1], then (x - mean) / std per channel."""
    assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3, "expected (S, S, 3) uint8"
    x = pixels.astype(np.float32) / np.float32(255.0)
    x = (x - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess(item: ImageInput, size: int = IMAGE_SIZE) -> np.ndarray:
    """One image (bytes, path, PIL or array) -> (3, size, size) float32, ready for the vision tower."""
    return normalize(resize_and_crop(to_rgb(load_image(item)), size))


def preprocess_batch(items: list[ImageInput], size: int = IMAGE_SIZE) -> np.ndarray:
    """Images -> (n, 3, size, size) float32."""
    return (
        np.stack([preprocess(item, size) for item in items])
        if items
        else np.zeros((0, 3, size, size), np.float32)
    )
