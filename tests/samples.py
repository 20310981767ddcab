"""Generated image files for tests: valid ones and each kind of bad input a batch job must survive."""

import io
import struct
import zlib

import numpy as np
import pydicom
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid


def png_bytes(array: np.ndarray, **kwargs) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, **kwargs).save(buf, format="PNG")
    return buf.getvalue()


def png16_bytes(values: np.ndarray, significant_bits: int | None = None) -> bytes:
    """A 16-bit grayscale PNG holding ``values`` as given, with an sBIT chunk when ``significant_bits`` is set."""
    info = PngInfo()
    if significant_bits:
        info.add(b"sBIT", bytes([significant_bits]))
    buf = io.BytesIO()
    Image.fromarray(values.astype(np.uint16)).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def dicom_bytes(rows: int, cols: int, pixels: np.ndarray | None, photometric: str = "MONOCHROME2", preamble: bool = True) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.Rows, ds.Columns = "CR", rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if pixels is not None:
        ds.PixelData = pixels.astype(np.uint16).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=preamble)
    return buf.getvalue()


def bad_inputs() -> dict[str, bytes]:
    """One file per way an input can fail, named for it; each must become one error row."""
    png = png_bytes(np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8))
    return {
        "corrupt.png": png[:40] + bytes(200) + png[240:],
        "truncated.png": png[: len(png) // 2],
        "zero-byte.jpg": b"",
        "not-an-image.jpg": b"these are not the pixels you are looking for",
        "too-large.png": png_header_only(8000, 7000),
        "no-pixels.dcm": dicom_bytes(16, 16, None),
    }


def write_labelled_folder(root, n_per_label: int, size: int = 64, seed: int = 0) -> None:
    """root/<label>/*.png for labels A, B and normal, learnable at a glance: A has a bright square
    top left, B one bottom right, normal neither; all on chest-like backgrounds."""
    from pathlib import Path

    from dualcam.synthetic import synthetic_xray

    rng = np.random.default_rng(seed)
    side = size // 4
    for label in ("A", "B", "normal"):
        folder = Path(root) / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_label):
            image = synthetic_xray(size, rng) * 0.6
            if label == "A":
                image[side // 2: side // 2 + side, side // 2: side // 2 + side] = 1.0
            if label == "B":
                image[-side - side // 2: -side // 2, -side - side // 2: -side // 2] = 1.0
            Image.fromarray((image * 255).astype(np.uint8)).save(folder / f"{label}-{i:03d}.png")


MARKER = (slice(8, 24), slice(8, 24))
"""Where ``planted_xray`` puts its marker at 128 px: a 16 x 16 square in the top left corner."""


def planted_xray(rng: np.random.Generator, positive: bool, marker: bool, size: int = 128) -> np.ndarray:
    """(size, size) float32 in [0, 1] for the planted-marker drift test: positives carry a bright
    lesion low in one lung; ``marker`` adds a saturated square near the top left corner, the kind of
    mark a collection process leaves."""
    from dualcam.synthetic import synthetic_xray

    image = synthetic_xray(size, rng) * 0.7
    if positive:
        yy, xx = np.mgrid[0:size, 0:size] / size
        cx, cy = rng.choice([0.3, 0.7]) + rng.uniform(-0.05, 0.05), rng.uniform(0.6, 0.75)
        image = image + 0.5 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 0.1**2))
    if marker:
        rows, cols = (slice(s.start * size // 128, s.stop * size // 128) for s in MARKER)
        image[rows, cols] = 1.0
    return np.clip(image, 0.0, 1.0).astype(np.float32)
