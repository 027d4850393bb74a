"""Opening images whose size nobody checked yet (an upload, a file in a dataset), with their pixel count
checked from the header before a single pixel is decoded. A few kilobytes of PNG can hold a 9400 x 9400
bilevel image whose decoding takes 700 MB; Pillow's own bomb check starts at 89 million pixels (a warning)
and 179 million (an error), far above what a classifier of small images or a caption viewer needs."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, UnidentifiedImageError

# 25 million pixels: a 5000 x 5000 photo or scan; ~75 MB once decoded as RGB.
MAX_PIXELS = 25_000_000


class ImageTooLargeError(ValueError):
    """An image with more pixels than :data:`MAX_PIXELS` (it is refused before it is decoded)."""


def check_pixels(image: Image.Image, what: str = "the image", limit: int = MAX_PIXELS) -> None:
    """Refuse ``image`` (opened, not yet decoded: only its header is read) if it has more than ``limit``
    pixels."""
    width, height = image.size
    if width * height > limit:
        raise ImageTooLargeError(f"{what} is {width:,} x {height:,} = {width * height:,} pixels, more than the "
                                 f"{limit:,} an image may have here; resize it (e.g. to at most 5000 x 5000)")


def open_checked(source: str | Path | bytes, what: str = "the image", limit: int = MAX_PIXELS) -> Image.Image:
    """Open and decode an image, its pixel count checked first; raises ValueError (too large, not an image)
    or OSError (unreadable) in one line."""
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except Image.DecompressionBombError as err:  # not a ValueError: Pillow refused the header itself
        raise ImageTooLargeError(f"{what} is too large to open ({err})") from err
    except UnidentifiedImageError as err:
        raise ValueError(f"{what} is not an image Pillow can read") from err
    check_pixels(image, what, limit)
    image.load()
    return image
