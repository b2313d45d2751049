"""Image files as 8-bit RGB for the folder loaders (`dance_folder`, `bair_folder`).

Every mode Pillow reads is converted, none refused: greyscale ("L", "1") is repeated over
the three channels; 16-bit greyscale ("I;16", which Pillow's own conversion would clip at
255) keeps its high byte, as Pillow reads 16-bit RGB; palette images are expanded; alpha
is dropped, or, where a transparent pixel means the white background (the dance pose
images), composited on white. A file that cannot be decoded (not an image, empty,
truncated, damaged data) is a `DatasetError` naming it.
"""

from __future__ import annotations

import pathlib
import struct
import zlib

import numpy as np
from PIL import Image, UnidentifiedImageError

from cvae_jax.errors import DatasetError

__all__ = ["read_rgb", "to_rgb"]

# What Pillow raises for a file it cannot decode (a fuzzed PNG gives the first three).
_READ_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, Image.DecompressionBombError)
_WHITE = (255, 255, 255, 255)


def to_rgb(im: Image.Image, alpha_on_white: bool = False) -> Image.Image:
    """RGB view of any mode (see the module docstring)."""
    if im.mode == "RGB":
        return im
    if im.mode == "I" or im.mode.startswith("I;16"):
        high_byte = np.asarray(im).astype(np.int64) >> 8
        im = Image.fromarray(np.clip(high_byte, 0, 255).astype(np.uint8))
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if not has_alpha:
        return im.convert("RGB")
    rgba = im.convert("RGBA")
    if alpha_on_white:
        rgba = Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba)
    return rgba.convert("RGB")


def _reason(path: pathlib.Path, err: BaseException) -> str:
    if isinstance(err, UnidentifiedImageError):
        if path.is_file() and path.stat().st_size == 0:
            return "the file is empty"
        return "not an image file Pillow can identify (another format, or a damaged header)"
    if isinstance(err, OSError) and err.strerror:  # permission denied, a folder, ...: no repeated path
        return err.strerror
    return str(err) or type(err).__name__


def read_rgb(path: pathlib.Path, alpha_on_white: bool = False) -> tuple[Image.Image, str]:
    """The decoded image as RGB, and its mode in the file."""
    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb(im, alpha_on_white), im.mode
    except _READ_ERRORS as err:
        raise DatasetError(f"cannot read image {path}: {_reason(pathlib.Path(path), err)}; "
                           "expected a complete PNG image") from err
