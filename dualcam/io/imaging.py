"""Decoding X-ray files, and the one path from a file's bytes to a model input.

One decoder, two ways out:

* ``decode_image(data, name)``: the whole image as float32 in [0, 1], shape (H, W) or (H, W, 3),
  for overlays, figures and anyone who wants the pixels.
* ``model_input(data, name, meta)``: the (3, S, S) model input and the image's (H, W), decoding
  only what the model needs, so that its cost follows S rather than the file. A JPEG's luma
  alone is decoded for grayscale experts; PNG and JPEG pixels are then box-averaged by integer
  factors (``box_factors``), in their own sample type, down to no less than 2 S a side; and
  ``preprocess`` makes the one antialiased resize to S. Training, scoring and ``dualcam explain``
  all take this path, and the GPU's (``device_decode``) computes the same for JPEGs; it differs
  from resizing the whole decoded image by about 0.002 on average in normalized units
  (docs/reference/images.md; bounded by ``tests/test_faithfulness.py``). JPEGs are decoded at full scale, not at
  libjpeg's reduced DCT scales, which nvJPEG does not have: a GPU and a CPU run must agree, and
  ADDK amplifies the small differences those scales make into visibly different heatmaps.

Values, the same both ways:

* PNG/JPEG: divided by the sample type's maximum (255, or 65535 for 16-bit); alpha is dropped. A
  16-bit grayscale PNG whose sBIT chunk says it holds fewer bits, and whose values all fit in
  them (a 12-bit detector's 0..4095 stored as is), is divided by that depth's maximum instead.
* DICOM: modality rescale (slope/intercept or LUT), then the VOI LUT or the first window, then
  min-max scaled to [0, 1] per image (a constant image becomes zeros); MONOCHROME1 (and a Presentation
  LUT Shape of INVERSE) is inverted so that bone is bright, as in MONOCHROME2. These are applied
  to the whole image before any reduction: the window and the min-max are not linear.

Size checks read the header only, before any pixel is decoded: at most ``MAX_PIXELS`` pixels, and at
most ``MAX_PIXELS`` x ``MAX_PIXEL_BYTES`` bytes of decoded samples (rows x columns x samples x bytes
per sample x frames). Pillow's own limit (``Image.MAX_IMAGE_PIXELS``) is set to ``MAX_PIXELS`` when
this module is imported, so that a DICOM file whose compressed frame is larger than its header says
is refused by the same bound. These bounds are also what bounds decoding time: a decoder cannot be
interrupted, so nothing is decoded that the bounds refuse (docs/reference/images.md). Every failure raises
``DecodeError`` naming the file and the reason, so a batch job can record it against the input and
move on.
"""

from __future__ import annotations

import io
import math
import re
import struct
import warnings
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F
from PIL import Image, ImageMode, UnidentifiedImageError

from dualcam.io.checkpoints import ExpertMeta

if TYPE_CHECKING:
    from pydicom import Dataset

MAX_PIXELS = 50_000_000
"""Decompression-bomb guard: images whose header claims more pixels (e.g. 7072 x 7072) are refused
before any pixel is decoded. Chest X-rays run to about 4300 x 4300 (18.5 MP). The one constant of
the decoding bounds: the byte bound is derived from it, and Pillow's limit is set to it."""
MAX_PIXEL_BYTES = 6
"""The largest pixel an X-ray needs, in bytes (3 samples of 16 bits): an image whose decoded samples
would take more than ``MAX_PIXELS`` pixels of this size (300 MB) is refused before decoding. Pixels
alone do not bound memory: 50 MP of 3 32-bit samples are 600 MB decoded and some 2.4 GB at the
peak of their conversion to float."""

# Pillow's decompression-bomb limit is dualcam's: it warns over it (an error for DICOM frames, see
# _check_compressed_frame) and raises over twice it, where its defaults are 89 and 179 MP.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".ima")
_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
# A legacy DICOM file (no preamble) starts with its first tag: group 0x0002 or 0x0008, little endian.
_DICOM_FIRST_GROUPS = (b"\x02\x00", b"\x08\x00")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as Pillow's convert("L") and JPEG's luma channel
REDUCE_MARGIN = 2
"""``model_input`` keeps both sides of an image at least this many times the model's input size
before the final antialiased resize: box averages at that density differ from the full image's
resize by less than a 16-bit or 8-bit rounding step, on average."""


class DecodeError(ValueError):
    """A file that cannot be turned into an image; ``str()`` names the file and the reason."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name}: {reason}")
        self.name, self.reason = name, reason


class _Decoded(NamedTuple):
    image: np.ndarray  # float32 in [0, 1], (h, w) or (h, w, 3)
    size: tuple[int, int]  # the file's (H, W)
    factors: tuple[int, int]  # the file's rows and columns per pixel of ``image``: (1, 1) unless reduced

    @property
    def extent(self) -> tuple[float, float]:
        """How many of its own rows and columns ``image`` spans: fewer than its shape when its
        last row or column averages a partial box."""
        return self.size[0] / self.factors[0], self.size[1] / self.factors[1]


def decode_image(data: bytes, name: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode PNG, JPEG or DICOM bytes to float32 in [0, 1], shape (H, W) or (H, W, 3), the whole image.

    ``name`` (a file name or URI) is used for the error message and, for files with no magic
    number, to decide whether to try DICOM (names like ``x.dcm``, ``x.IMA``, ``1.2.840.1``, ``IM0001``).
    """
    return _decode(data, name, max_pixels).image


def model_input(
    data: bytes, name: str, meta: ExpertMeta, max_pixels: int = MAX_PIXELS,
) -> tuple[torch.Tensor, tuple[int, int]]:
    """The (3, S, S) float32 model input for a file's bytes (S = ``meta.input_size``), and the
    image's (height, width) in pixels, decoding only what the model needs (see the module docstring).

    Raises ``DecodeError`` as ``decode_image`` does.
    """
    decoded = _decode(data, name, max_pixels, REDUCE_MARGIN * meta.resized_side, grey=meta.color_mode == "L")
    return preprocess(decoded.image, meta, decoded.extent, decoded.size), decoded.size


def _decode(data: bytes, name: str, max_pixels: int, min_side: int | None = None, grey: bool = False) -> _Decoded:
    """The image; with ``min_side``, reduced to no less than ``min_side`` pixels a side where it
    has that many. ``grey`` lets a decoder return luma only where that costs less."""
    if not data:
        raise DecodeError(name, "empty file (0 bytes)")
    if data[128:132] == b"DICM":
        return _decode_dicom(data, name, max_pixels)
    if data.startswith(_PNG_MAGIC) or data.startswith(_JPEG_MAGIC):
        return _decode_pil(data, name, max_pixels, min_side, grey)
    if data[:2] in _DICOM_FIRST_GROUPS or _may_be_dicom_name(name):
        return _decode_dicom(data, name, max_pixels)
    raise DecodeError(name, f"not a PNG, JPEG or DICOM file ({_looks_like(data)})")


_OTHER_MAGIC = {b"GIF8": "a GIF", b"II*\0": "a TIFF", b"MM\0*": "a TIFF", b"%PDF": "a PDF", b"PK\3\4": "a ZIP archive",
                b"BM": "a BMP", b"\0\0\0\x0cjP": "a JPEG 2000 file", b"\xff\x4f\xff\x51": "a JPEG 2000 codestream"}


def _looks_like(data: bytes) -> str:
    """What a file that is no image looks like, in words: never its bytes, which may be anything a
    manifest names (a credentials file starts ``[default``)."""
    kind = next((kind for magic, kind in _OTHER_MAGIC.items() if data.startswith(magic)), None)
    if kind:
        return f"it looks like {kind}"
    head = data[:512]
    return "it looks like text" if head and all(32 <= b < 127 or b in b"\t\r\n" for b in head) else "binary data"


def _may_be_dicom_name(name: str) -> bool:
    """DICOM files are often named by UID (1.2.840...), with no suffix, or with .dcm/.dicom/.ima."""
    path = PurePosixPath(name)
    suffix = path.suffix.lower()
    digits = suffix[1:].isascii() and suffix[1:].isdigit()
    return suffix in _DICOM_SUFFIXES or digits or (suffix == "" and not path.name.startswith("."))


# The last part of a name that is an input: it does not start with "." (hidden files, macOS's "._name"
# companions) and its suffix (from its last ".", as pathlib reads it) is an image suffix, digits (DICOM UIDs),
# or none at all (DICOM-like names such as IM0001). One pattern for Python's re and Arrow's RE2 alike.
_IMAGE_NAME = r"(?:.*/)?[^/.](?:[^/]*\.(?:" + "|".join(s[1:] for s in IMAGE_SUFFIXES) + r"|[0-9]+|)|[^/.]*)"
_IMAGE_NAME_RE = re.compile(_IMAGE_NAME, re.IGNORECASE | re.DOTALL)


def is_image_name(name: str) -> bool:
    """Whether a listed file is an input: a PNG/JPEG suffix, or a name a DICOM file may have.

    Hidden files (``.name``, including macOS's ``._name`` AppleDouble companions) never are.
    """
    return _IMAGE_NAME_RE.fullmatch(name) is not None


def image_names(uris: pa.Array | pa.ChunkedArray) -> pa.BooleanArray:
    """``is_image_name`` of every URI at once, in Arrow (millions a second)."""
    return pc.match_substring_regex(uris, f"(?is)^{_IMAGE_NAME}$")


def max_decoded_bytes(max_pixels: int = MAX_PIXELS) -> int:
    """The most bytes of decoded samples one image may take, for a pixel limit: ``MAX_PIXEL_BYTES`` a pixel."""
    return max_pixels * MAX_PIXEL_BYTES


def _check_size(name: str, width: int, height: int, max_pixels: int, pixel_bytes: int, frames: int = 1) -> None:
    """DecodeError unless a header's image fits both bounds; ``pixel_bytes``: samples x bytes per sample."""
    if width < 1 or height < 1:
        raise DecodeError(name, f"header claims an empty image ({width} x {height})")
    if width * height > max_pixels:
        raise DecodeError(
            name,
            f"header claims {width} x {height} pixels, over the limit of {max_pixels} "
            "(dualcam.MAX_PIXELS): refusing a possible decompression bomb",
        )
    size, limit = width * height * pixel_bytes * frames, max_decoded_bytes(max_pixels)
    if size > limit:
        of_frames = f" in {frames} frames" if frames > 1 else ""
        raise DecodeError(
            name,
            f"header claims {width} x {height} pixels of {pixel_bytes} bytes{of_frames}: {size:,} bytes decoded, "
            f"over the limit of {limit:,} (dualcam.MAX_PIXELS x {MAX_PIXEL_BYTES} bytes); not decoded",
        )


def _mode_bytes(mode: str) -> int:
    """Bytes a pixel of a Pillow mode takes: its bands x its sample's size."""
    described = ImageMode.getmode(mode)
    return len(described.bands) * np.dtype(described.typestr).itemsize


def _decode_pil(data: bytes, name: str, max_pixels: int, min_side: int | None, grey: bool) -> _Decoded:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im: Image.Image = Image.open(io.BytesIO(data), formats=("PNG", "JPEG"))
            _check_size(name, im.width, im.height, max_pixels, _mode_bytes(im.mode))
            size = (im.height, im.width)
            if min_side and grey and im.format == "JPEG":
                im.draft("L", im.size)  # libjpeg decodes a colour file's luma channel only, at full scale
            im.load()
    except DecodeError:
        raise
    except Image.DecompressionBombError as err:  # Pillow's own guard fires first on extreme headers
        raise DecodeError(name, f"{err}; refusing a possible decompression bomb") from None
    except UnidentifiedImageError:  # its message names an in-memory buffer, not the file
        raise DecodeError(name, f"corrupt or truncated {_kind(data)} (header not recognized)") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise DecodeError(name, f"corrupt or truncated {_kind(data)} ({err})") from None
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        top = _grey16_max(im, data)
    else:
        top = 255.0
        if im.mode in ("1", "LA"):
            im = im.convert("L")
        elif im.mode not in ("L", "RGB"):
            im = im.convert("RGB")
    im, factors = _box_reduce(im, min_side)
    return _Decoded((np.asarray(im, dtype=np.float32) / top).clip(0.0, 1.0), size, factors)


def _grey16_max(im: Image.Image, data: bytes) -> float:
    """What a 16-bit grayscale sample is divided by: 65535, or 2**b - 1 where the PNG's sBIT chunk
    says b significant bits and no value exceeds them. The PNG specification asks writers to
    scale such samples up to 16 bits (then a value over 2**b - 1 occurs unless the image is almost
    black); many medical exporters store them as measured, which would otherwise show 16 times
    too dark for 12 bits."""
    bits = _png_significant_bits(data) if data.startswith(_PNG_MAGIC) else None
    if bits and bits < 16 and im.getextrema()[1] < 2**bits:
        return 2.0**bits - 1
    return 65535.0


def _png_significant_bits(data: bytes) -> int | None:
    """The first value of a PNG's sBIT chunk (the gray or red sample's significant bits), if it has one.

    Pillow does not keep sBIT; it comes before the image data, so this walks a few chunk headers.
    """
    pos = len(_PNG_MAGIC)
    while pos + 9 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"sBIT":
            return data[pos + 8] if length else None
        if kind in (b"IDAT", b"IEND"):
            return None
        pos += 12 + length
    return None


def box_factors(size: tuple[int, int], min_side: int | None) -> tuple[int, int]:
    """(rows, columns) per box for an image of ``size`` (H, W): the largest integers that keep each
    side at least ``min_side`` pixels; (1, 1) for None."""
    return (max(1, size[0] // min_side), max(1, size[1] // min_side)) if min_side else (1, 1)


def _box_reduce(im: Image.Image, min_side: int | None) -> tuple[Image.Image, tuple[int, int]]:
    """``im`` averaged over boxes of ``box_factors`` (the last row and column average what is
    left), in its own sample type (16-bit samples as 32-bit integers); and those factors."""
    ky, kx = box_factors((im.height, im.width), min_side)
    if (kx, ky) == (1, 1):
        return im, (1, 1)
    if im.mode.startswith("I;16"):  # Pillow reduces 32-bit integers, not 16-bit ones
        im = im.convert("I")
    return im.reduce((kx, ky)), (ky, kx)


def _kind(data: bytes) -> str:
    return "PNG" if data.startswith(_PNG_MAGIC) else "JPEG"


def _decode_dicom(data: bytes, name: str, max_pixels: int) -> _Decoded:
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        has_pixels = "PixelData" in ds
        width, height = int(ds.get("Columns") or 0), int(ds.get("Rows") or 0)
        frames = max(1, int(ds.get("NumberOfFrames") or 1))
        samples, bits = max(1, int(ds.get("SamplesPerPixel") or 1)), int(ds.get("BitsAllocated") or 8)
    except Exception as err:  # pydicom raises many types for malformed files
        raise DecodeError(name, f"not a readable DICOM file ({type(err).__name__}: {err})") from None
    if not has_pixels:
        if data[128:132] == b"DICM" or "Rows" in ds:
            raise DecodeError(name, "DICOM file has no pixel data (or is truncated before it)")
        raise DecodeError(name, f"not a PNG, JPEG or DICOM file ({_looks_like(data)})")
    _check_size(name, width, height, max_pixels, samples * max(1, -(-bits // 8)), frames)
    if frames > 1:
        raise DecodeError(name, f"multi-frame DICOM ({frames} frames); a radiograph has one")
    _check_compressed_frame(ds, name, width, height)
    try:
        image = _dicom_pixels(ds)
    except Exception as err:  # pixel handlers raise many types for unsupported or broken data
        raise DecodeError(name, f"cannot decode DICOM pixel data ({type(err).__name__}: {err})") from None
    # Not reduced: the display values are float32 already, and box-averaging them costs as much as
    # the antialiased resize it would spare (measured on a 2500 x 2048 image).
    return _Decoded(image, (height, width), (1, 1))


def _check_compressed_frame(ds: Dataset, name: str, width: int, height: int) -> None:
    """DecodeError for compressed pixel data whose frame, as Pillow reads its header, is not the image the
    DICOM header claims (which ``_check_size`` has bounded): refused before a pixel of it is decoded.

    Pillow's own limit is dualcam's (``MAX_PIXELS``), and its warning over it is an error here: one
    bound for what the DICOM header claims and what its frame does. Frames Pillow does not read (RLE)
    are decoded by pydicom into the header's size.
    """
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is None or not syntax.is_compressed or not syntax.is_encapsulated:
        return
    from pydicom.encaps import generate_frames

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            frame = Image.open(io.BytesIO(next(generate_frames(ds.PixelData, number_of_frames=1))),
                               formats=("JPEG", "JPEG2000"))  # as pydicom's Pillow decoder opens it
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        claimed = re.search(r"\((\d+) pixels\)", str(err))
        raise DecodeError(
            name,
            f"its compressed pixel data holds a frame of {claimed.group(1) if claimed else 'more'} pixels, over the "
            f"limit of {Image.MAX_IMAGE_PIXELS} (dualcam.MAX_PIXELS), though its header claims {width} x {height}: "
            "refusing a possible decompression bomb",
        ) from None
    except Exception:  # not a frame Pillow reads, or broken: pydicom's decoders say which when they decode it
        return
    if frame.size != (width, height):
        raise DecodeError(name, f"its compressed frame is {frame.width} x {frame.height} pixels, though its header "
                                f"claims {width} x {height}; not decoded")


def _dicom_pixels(ds: Dataset) -> np.ndarray:
    """Pixel values as displayed, scaled to [0, 1] (see the module docstring)."""
    from pydicom.pixels import apply_color_lut, get_decoder
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    if "TransferSyntaxUID" not in ds.file_meta:  # legacy ACR-NEMA style file: no file meta
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )
    if "pillow" in get_decoder(ds.file_meta.TransferSyntaxUID).available_plugins:
        # Measured on the sample DICOMs: Pillow decodes JPEG baseline 2-4x faster than GDCM or
        # pylibjpeg, and JPEG 2000 as fast as pylibjpeg-openjpeg and 2x faster than GDCM; pydicom
        # would try GDCM first where it is installed.
        ds.pixel_array_options(decoding_plugin="pillow")
    pixels = ds.pixel_array
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(pixels, ds)
        return (rgb / np.iinfo(rgb.dtype).max).astype(np.float32)
    if not photometric.startswith("MONOCHROME"):  # RGB; pydicom has already turned YBR into RGB
        return (pixels / (2.0 ** int(ds.get("BitsStored", 8)) - 1)).clip(0.0, 1.0).astype(np.float32)
    if pixels.ndim != 2:
        raise ValueError(f"unexpected grayscale pixel array (shape {pixels.shape})")
    inverse = photometric == "MONOCHROME1" or str(ds.get("PresentationLUTShape", "")).upper() == "INVERSE"
    return _grey_display(ds, pixels, inverse)


def _grey_display(ds: Dataset, pixels: np.ndarray, inverse: bool) -> np.ndarray:
    """Stored grayscale values as displayed: rescale, VOI, min-max over the image, float32 (H, W).

    Every step is a function of the stored value alone, so integer images of up to 16 bits are
    transformed once per value in their range and then looked up: the same numbers as
    transforming every pixel, at a fraction of the cost.
    """
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    lo, hi = int(pixels.min()), int(pixels.max())
    lookup = pixels.dtype.kind in "ui" and pixels.dtype.itemsize <= 2
    base = lo if pixels.dtype.kind == "i" else 0  # unsigned values index the table directly
    values = np.arange(base, hi + 1).astype(pixels.dtype) if lookup else pixels
    shown = apply_voi_lut(apply_modality_lut(values, ds), ds).astype(np.float64)
    if not np.isfinite(shown).all():
        raise ValueError("non-finite values after the modality and VOI transforms")
    present = shown[lo - base:] if lookup else shown
    if lookup and not (np.all(np.diff(present) >= 0) or np.all(np.diff(present) <= 0)):
        present = present[np.unique(pixels).astype(np.int64) - lo]  # a table that is not monotonic: the values used
    low, high = present.min(), present.max()
    scaled = (shown - low) / (high - low) if high > low else np.zeros_like(shown)
    if inverse:
        scaled = 1.0 - scaled
    scaled = scaled.astype(np.float32)
    if not lookup:
        return scaled
    return scaled[np.subtract(pixels, base, dtype=np.int32) if base else pixels]


def preprocess(
    image: np.ndarray, meta: ExpertMeta, extent: tuple[float, float] | None = None, size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """The model input for one decoded image: (3, S, S) float32, S = ``meta.input_size``.

    Resized with antialiased bilinear filtering as ``meta.resize`` says (``input_window``): ``whole``,
    to S x S with no crop (every image pixel maps to a CAM cell, so heatmaps cover the whole image), or
    ``center-crop``, as the model was trained; in colour mode "L" converted to luminance and repeated
    over three channels; then normalized with ``meta.mean`` and ``meta.std``. ``model_input`` ends
    here, so training, scoring and explaining cannot disagree. ``extent`` (rows, columns) is how much
    of ``image`` the picture covers, in its pixels, when its last row or column averages a partial box
    (``model_input``'s reduced images; default: all of it), and ``size`` the image's own (H, W) before
    that reduction (default: the extent).
    """
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"preprocess expects (H, W) or (H, W, 3), got shape {image.shape}")
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    return input_tensor(t.permute(2, 0, 1) if t.ndim == 3 else t[None], meta, extent, size)


def input_tensor(
    image: torch.Tensor, meta: ExpertMeta, extent: tuple[float, float] | None = None,
    size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """``preprocess`` for a (C, H, W) float32 image in [0, 1] (C = 1 or 3) on any device: the
    (3, S, S) model input, on that device. The one resize, crop and normalization of every path
    (``model_input`` on CPU, ``device_decode`` on the scorer's device)."""
    t = image
    if meta.color_mode == "L" and t.shape[0] == 3:
        t = torch.einsum("c,chw->hw", torch.tensor(_LUMA, device=t.device), t)[None]
    height, width = size or extent or t.shape[1:]
    resized_h, resized_w, top, left = (int(v) for v in input_window(meta, height, width))
    resized = (resized_h, resized_w)
    if extent is None or tuple(extent) == t.shape[1:]:
        t = F.interpolate(t[None], size=resized, mode="bilinear", antialias=True, align_corners=False)[0]
    else:  # the scale maps the covered extent, not the array, onto the input: no stretch at the far edges
        scales = [_scale(n, covered, side) for n, covered, side in zip(t.shape[1:], extent, resized)]
        t = F.interpolate(t[None], scale_factor=scales, recompute_scale_factor=False,
                          mode="bilinear", antialias=True, align_corners=False)[0]
    s = meta.input_size
    t = t[:, top:top + s, left:left + s].expand(3, s, s)
    mean = torch.tensor(meta.mean, dtype=torch.float32, device=t.device)[:, None, None]
    std = torch.tensor(meta.std, dtype=torch.float32, device=t.device)[:, None, None]
    return ((t - mean) / std).contiguous()


@dataclass(frozen=True)
class InputGeometry:
    """What places an expert's S x S input in an image (``input_window``): ``ExpertMeta``'s input_size, resize and
    resized_side. A run records it (``results.RunSpec``), so that ``render`` and ``evaluate`` put stored maps over
    the part of each image the model saw without the experts at hand."""

    input_size: int
    resize: str = "whole"
    resized_side: int = 0

    @classmethod
    def of(cls, meta: ExpertMeta) -> InputGeometry:
        return cls(meta.input_size, meta.resize, meta.resized_side)


def input_window(
    meta: ExpertMeta | InputGeometry, height: float | np.ndarray, width: float | np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Where an image of (height, width) pixels goes in the model input: it is resized to (resized_h,
    resized_w), and the S x S input is the window of that at (top, left). ``whole``: (S, S, 0, 0);
    ``center-crop``: torchvision's ``Resize(resized_side)`` (short side to it, the long side's length
    truncated) then ``CenterCrop(S)`` (offsets rounded half to even). Element-wise over arrays, so the
    scorers map a batch's CAM positions back to each image's pixels with the same arithmetic."""
    h, w = np.asarray(height, np.float64), np.asarray(width, np.float64)
    s, side = meta.input_size, meta.resized_side
    if meta.resize == "whole":
        full = np.full(np.broadcast(h, w).shape, s, np.int64)
        return full, full, np.zeros_like(full), np.zeros_like(full)
    resized_h = np.where(w <= h, np.floor(side * h / w), side).astype(np.int64)
    resized_w = np.where(w <= h, side, np.floor(side * w / h)).astype(np.int64)
    top, left = (np.round((resized - s) / 2).astype(np.int64) for resized in (resized_h, resized_w))
    return resized_h, resized_w, top, left


def image_window(meta: ExpertMeta | InputGeometry, height: int, width: int) -> tuple[int, int, int, int]:
    """(top, left, bottom, right), exclusive, in image pixels: the part of an image the model input shows
    (all of it unless ``meta.resize`` crops), rounded to whole pixels, for drawing a heatmap over it."""
    resized_h, resized_w, top, left = (int(v) for v in input_window(meta, height, width))
    s, sy, sx = meta.input_size, height / resized_h, width / resized_w
    return round(top * sy), round(left * sx), round((top + s) * sy), round((left + s) * sx)


def _scale(n: int, covered: float, size: int) -> float:
    """size / covered, nudged up by as many ulps as it takes for torch's floor(n * scale) to give
    ``size`` output pixels (n >= covered > n - 1)."""
    scale = size / covered
    while math.floor(n * scale) < size:
        scale = math.nextafter(scale, math.inf)
    return scale
