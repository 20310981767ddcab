"""JPEGs decoded in batches on the scorer's device: the GPU's way from bytes to model inputs.

On a GPU node the model is not what limits scoring; decoding is (docs/reference/images.md). So a
scoring actor that holds a GPU gets the JPEGs as bytes (its loaders only read them: ``takes``
says which) and decodes them together with nvJPEG, through torchvision's batched
``decode_jpeg(list, device=...)``. It then computes what ``imaging.model_input`` computes from the
same pixels, on the device: the box averages of ``imaging.box_factors``, with Pillow's integer
rounding (``box_reduce``), and the one antialiased resize and normalization of
``imaging.input_tensor``. On a CPU (libjpeg-turbo under both torchvision and Pillow) the two paths
give the same inputs bit for bit; on a GPU they differ where nvJPEG's IDCT and chroma upsampling
differ from libjpeg's, and ``make gpu-check`` reports by how much.

``takes`` keeps on the CPU path what nvJPEG handles badly or not at all, from the header alone:
anything but a JPEG, CMYK and Adobe-transformed JPEGs, progressive ones (nvJPEG decodes those one
by one, its Huffman stage on the host), files cut short (nvJPEG may return a partial image where
Pillow reports the truncation) and images over ``MAX_PIXELS``. A JPEG the device still refuses
comes back as None, for the caller to decode on the CPU. EXIF orientation is ignored, as on the
CPU path.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from dualcam.io.checkpoints import ExpertMeta
from dualcam.io.imaging import MAX_PIXELS, REDUCE_MARGIN, box_factors, input_tensor

_JPEG_MAGIC = b"\xff\xd8\xff"
_END_OF_IMAGE = b"\xff\xd9"
# torchvision 0.29 deprecates its image decoders in favour of TorchCodec, a dependency dualcam does
# not have (nor do GPU images with torchvision 0.26, which do not warn): silenced, not repeated per batch.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision are deprecated",
                        category=DeprecationWarning)


def takes(data: bytes, max_pixels: int = MAX_PIXELS) -> bool:
    """Whether ``DeviceDecoder`` should decode this file: a whole sequential 8-bit JPEG, grey or
    YCbCr colour, of at most ``max_pixels`` pixels. Reads the header only (tens of microseconds)."""
    if not data.startswith(_JPEG_MAGIC) or not data.rstrip(b"\0").endswith(_END_OF_IMAGE):
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=("JPEG",)) as im:
                return (im.mode in ("L", "RGB") and im.width * im.height <= max_pixels
                        and "progressive" not in im.info and "adobe" not in im.info)
    except Exception:  # whatever Pillow cannot read, the CPU path reports properly
        return False


class DeviceDecoder:
    """Model inputs for JPEG bytes, decoded in one batch on ``device`` (grey experts: luma only)."""

    def __init__(self, meta: ExpertMeta, device: torch.device | str):
        self.meta, self.device = meta, torch.device(device)
        self.mode = ImageReadMode.GRAY if meta.color_mode == "L" else ImageReadMode.RGB

    def __call__(self, files: Sequence[bytes]) -> list[tuple[torch.Tensor, tuple[int, int]] | None]:
        """Per file, in order: ((3, S, S) float32 model input on the device, the image's (H, W)),
        or None where the device's decoder refused the file."""
        encoded = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in files]
        if not encoded:
            return []
        try:
            images = decode_jpeg(encoded, mode=self.mode, device=self.device)
        except Exception:  # one file it refuses fails the whole batch: each alone, then
            images = [self._alone(e) for e in encoded]
        return [None if image is None else (self._input(image), tuple(image.shape[-2:])) for image in images]

    def _alone(self, encoded: torch.Tensor) -> torch.Tensor | None:
        try:
            return decode_jpeg([encoded], mode=self.mode, device=self.device)[0]
        except Exception:
            return None

    def _input(self, image: torch.Tensor) -> torch.Tensor:
        """(C, H, W) uint8 -> (3, S, S) model input, as ``model_input`` makes it from the same pixels."""
        height, width = image.shape[-2:]
        ky, kx = box_factors((height, width), REDUCE_MARGIN * self.meta.resized_side)
        reduced = box_reduce(image, ky, kx).to(torch.float32).div_(255.0)
        return input_tensor(reduced, self.meta, (height / ky, width / kx), (height, width))


def box_reduce(image: torch.Tensor, ky: int, kx: int) -> torch.Tensor:
    """(C, H, W) uint8 averaged over ky x kx boxes, the last row and column of boxes over what is
    left: (C, ceil(H / ky), ceil(W / kx)) uint8, equal to Pillow's ``Image.reduce((kx, ky))``, whose
    rounding it repeats: ((sum + n // 2) * m(n)) >> 24, m(n) = floor(float32(2^32) / float32(256 n))."""
    if (ky, kx) == (1, 1):
        return image
    c, h, w = image.shape
    rows, cols = -(-h // ky), -(-w // kx)
    padded = F.pad(image.to(torch.int32), (0, cols * kx - w, 0, rows * ky - h))
    sums = padded.view(c, rows, ky, cols, kx).sum(dim=(2, 4), dtype=torch.int64)
    count_y = torch.full((rows,), ky, dtype=torch.int64)
    count_x = torch.full((cols,), kx, dtype=torch.int64)
    count_y[-1], count_x[-1] = h - (rows - 1) * ky, w - (cols - 1) * kx
    counts = (count_y[:, None] * count_x[None, :]).numpy()
    multipliers = (np.float32(2.0**32) / (256 * counts).astype(np.float32)).astype(np.int64)
    amend, factor = (torch.from_numpy(a).to(image.device) for a in (counts // 2, multipliers))
    return (((sums + amend) * factor) >> 24).to(torch.uint8)
