"""Decoding X-ray files to float arrays, and the one preprocessing step every model input takes.

``decode_image`` accepts PNG and JPEG (8-bit L, RGB, RGBA, palette, 16-bit grayscale PNG) and
DICOM (with or without the 128-byte preamble, compressed or not, as far as pydicom and Pillow can
decode it). It returns float32 values in [0, 1]:

* PNG/JPEG: divided by the sample type's maximum (255, or 65535 for 16-bit); alpha is dropped.
* DICOM: modality rescale (slope/intercept or LUT), then the VOI LUT or the first window, then
  min-max scaled to [0, 1] per image (a constant image becomes zeros); MONOCHROME1 (and a Presentation
  LUT Shape of INVERSE) is inverted so that bone is bright, as in MONOCHROME2.

Every failure raises ``DecodeError`` naming the file and the reason, so a batch job can record it
against the input and move on.
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import PurePosixPath

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from dualcam.experts import ExpertMeta

MAX_PIXELS = 50_000_000
"""Decompression-bomb guard: images whose header claims more pixels (e.g. 7072 x 7072) are refused
before any pixel is decoded. Chest X-rays run to about 4300 x 4300 (18.5 MP)."""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".ima")
_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
# A legacy DICOM file (no preamble) starts with its first tag: group 0x0002 or 0x0008, little endian.
_DICOM_FIRST_GROUPS = (b"\x02\x00", b"\x08\x00")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as Pillow's convert("L")


class DecodeError(ValueError):
    """A file that cannot be turned into an image; ``str()`` names the file and the reason."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name}: {reason}")
        self.name, self.reason = name, reason


def decode_image(data: bytes, name: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode PNG, JPEG or DICOM bytes to float32 in [0, 1], shape (H, W) or (H, W, 3).

    ``name`` (a file name or URI) is used for the error message and, for files with no magic
    number, to decide whether to try DICOM (names like ``x.dcm``, ``x.IMA``, ``1.2.840.1``, ``IM0001``).
    """
    if not data:
        raise DecodeError(name, "empty file (0 bytes)")
    if data[128:132] == b"DICM":
        return _decode_dicom(data, name, max_pixels)
    if data.startswith(_PNG_MAGIC) or data.startswith(_JPEG_MAGIC):
        return _decode_pil(data, name, max_pixels)
    if data[:2] in _DICOM_FIRST_GROUPS or _may_be_dicom_name(name):
        return _decode_dicom(data, name, max_pixels)
    raise DecodeError(name, f"not a PNG, JPEG or DICOM file (starts with {data[:8]!r})")


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


def _check_size(name: str, width: int, height: int, max_pixels: int) -> None:
    if width < 1 or height < 1:
        raise DecodeError(name, f"header claims an empty image ({width} x {height})")
    if width * height > max_pixels:
        raise DecodeError(
            name,
            f"header claims {width} x {height} pixels, over the limit of {max_pixels} "
            "(dualcam.imaging.MAX_PIXELS): refusing a possible decompression bomb",
        )


def _decode_pil(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=("PNG", "JPEG"))
            _check_size(name, im.width, im.height, max_pixels)
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
        return (np.asarray(im, dtype=np.float32) / 65535.0).clip(0.0, 1.0)
    if im.mode in ("1", "LA"):
        im = im.convert("L")
    elif im.mode not in ("L", "RGB"):
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.float32) / 255.0


def _kind(data: bytes) -> str:
    return "PNG" if data.startswith(_PNG_MAGIC) else "JPEG"


def _decode_dicom(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        has_pixels = "PixelData" in ds
        width, height = int(ds.get("Columns") or 0), int(ds.get("Rows") or 0)
        frames = int(ds.get("NumberOfFrames") or 1)
    except Exception as err:  # pydicom raises many types for malformed files
        raise DecodeError(name, f"not a readable DICOM file ({type(err).__name__}: {err})") from None
    if not has_pixels:
        if data[128:132] == b"DICM" or "Rows" in ds:
            raise DecodeError(name, "DICOM file has no pixel data (or is truncated before it)")
        raise DecodeError(name, f"not a PNG, JPEG or DICOM file (starts with {data[:8]!r})")
    _check_size(name, width, height, max_pixels)
    if frames > 1:
        raise DecodeError(name, f"multi-frame DICOM ({frames} frames); a radiograph has one")
    try:
        return _dicom_pixels(ds)
    except Exception as err:  # pixel handlers raise many types for unsupported or broken data
        raise DecodeError(name, f"cannot decode DICOM pixel data ({type(err).__name__}: {err})") from None


def _dicom_pixels(ds) -> np.ndarray:
    """Pixel values as displayed, scaled to [0, 1] (see the module docstring)."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    if "TransferSyntaxUID" not in ds.file_meta:  # legacy ACR-NEMA style file: no file meta
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )
    pixels = ds.pixel_array
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(pixels, ds)
        return (rgb / np.iinfo(rgb.dtype).max).astype(np.float32)
    if not photometric.startswith("MONOCHROME"):  # RGB; pydicom has already turned YBR into RGB
        return (pixels / (2.0 ** int(ds.get("BitsStored", 8)) - 1)).clip(0.0, 1.0).astype(np.float32)
    values = apply_voi_lut(apply_modality_lut(pixels, ds), ds).astype(np.float64)
    if values.ndim != 2 or not np.isfinite(values).all():
        raise ValueError(f"unexpected grayscale pixel array (shape {values.shape}, or non-finite values)")
    lo, hi = values.min(), values.max()
    scaled = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    if photometric == "MONOCHROME1" or str(ds.get("PresentationLUTShape", "")).upper() == "INVERSE":
        scaled = 1.0 - scaled
    return scaled.astype(np.float32)


def preprocess(image: np.ndarray, meta: ExpertMeta) -> torch.Tensor:
    """The model input for one decoded image: (3, S, S) float32, S = ``meta.input_size``.

    Resized to S x S with antialiased bilinear filtering and no crop (every image pixel maps to
    a CAM cell, so heatmaps cover the whole image); in colour mode "L" converted to luminance
    and repeated over three channels; then normalized with ``meta.mean`` and ``meta.std``.
    Training and scoring both call this, so they cannot disagree.
    """
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"preprocess expects (H, W) or (H, W, 3), got shape {image.shape}")
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    t = t.permute(2, 0, 1) if t.ndim == 3 else t[None]
    if meta.color_mode == "L" and t.shape[0] == 3:
        t = torch.einsum("c,chw->hw", torch.tensor(_LUMA), t)[None]
    size = (meta.input_size, meta.input_size)
    t = F.interpolate(t[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    t = t.expand(3, *size)
    mean = torch.tensor(meta.mean, dtype=torch.float32)[:, None, None]
    std = torch.tensor(meta.std, dtype=torch.float32)[:, None, None]
    return ((t - mean) / std).contiguous()
