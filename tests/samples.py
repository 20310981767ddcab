"""Generated image files for tests: valid ones and each kind of bad input a batch job must survive."""

import io
import struct
import zlib

import numpy as np
import pydicom
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    SecondaryCaptureImageStorage,
    generate_uid,
)


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
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def dicom_bytes(
    rows: int, cols: int, pixels: np.ndarray | None, photometric: str = "MONOCHROME2", preamble: bool = True,
) -> bytes:
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

    from dualcam.synthetic.scenarios import synthetic_xray

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
    from dualcam.synthetic.scenarios import synthetic_xray

    image = synthetic_xray(size, rng) * 0.7
    if positive:
        yy, xx = np.mgrid[0:size, 0:size] / size
        cx, cy = rng.choice([0.3, 0.7]) + rng.uniform(-0.05, 0.05), rng.uniform(0.6, 0.75)
        image = image + 0.5 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 0.1**2))
    if marker:
        rows, cols = (slice(s.start * size // 128, s.stop * size // 128) for s in MARKER)
        image[rows, cols] = 1.0
    return np.clip(image, 0.0, 1.0).astype(np.float32)


# --- X-ray and DICOM samples of every kind the decoder takes, generated (no licence needed) -------

def xray_pixels(height: int, width: int, seed: int) -> np.ndarray:
    """(height, width) float32 in [0, 1]: a chest-like image (dark lungs, bright mediastinum) of any shape."""
    from dualcam.synthetic.scenarios import synthetic_xray

    square = synthetic_xray(max(height, width), np.random.default_rng(seed))
    return np.asarray(Image.fromarray(square).resize((width, height), Image.Resampling.BILINEAR), np.float32)


def encoded(array: np.ndarray, format: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=format, **kwargs)
    return buf.getvalue()


def dicom_dataset(pixels: np.ndarray, photometric: str, bits_stored: int, transfer_syntax: str) -> pydicom.Dataset:
    """A one-frame grayscale CR dataset with file meta; ``PixelData`` is left to the caller."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[photometric, str(bits_stored), transfer_syntax])
    meta.TransferSyntaxUID = transfer_syntax
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.BodyPartExamined, ds.Rows, ds.Columns = "CR", "CHEST", *pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated = 8 if bits_stored <= 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits_stored, bits_stored - 1, 0
    return ds


def compressed_dicom(
    pixels: np.ndarray, photometric: str, bits_stored: int, transfer_syntax: str, frame: bytes,
) -> bytes:
    """A DICOM file whose pixel data is the encapsulated, already compressed ``frame``."""
    ds = dicom_dataset(pixels, photometric, bits_stored, transfer_syntax)
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def legacy_dicom(pixels: np.ndarray, photometric: str, bits_stored: int) -> bytes:
    """An ACR-NEMA-style file: implicit VR little endian, no 128-byte preamble, no DICM prefix, no file meta."""
    ds = dicom_dataset(pixels, photometric, bits_stored, ImplicitVRLittleEndian)
    del ds.file_meta
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, implicit_vr=True, little_endian=True, enforce_file_format=False)
    return buf.getvalue()


MONO_TWINS = ("mono2-jpeg-baseline.dcm", "mono1-jpeg-baseline.dcm")
"""Generated DICOMs with the same JPEG pixels, one labelled MONOCHROME2, the other MONOCHROME1."""
MONO1_CHEST = "mono1-legacy-implicit-vr.dcm"
"""A generated MONOCHROME1 chest: stored values are high where the film is dark (the lungs)."""
COVID_METADATA = "covid-chestxray-dataset-metadata.csv"
GENERATED_COVID_COUNTS = {"kept": 3, "missing": 2, "covid": 2, "both_views_at_least": 6, "excluded": {
    "view not PA": 2, "not an X-ray": 1, "no finding recorded ('todo')": 1}}
"""What ``read_labelled`` finds in the generated ``COVID_METADATA``."""


def write_xray_samples(root) -> None:
    """Write, under ``root``, X-ray-like files of every kind the decoder takes, laid out and listed as
    ../shared/data/xray is (``images/`` with ``metadata.csv``, ``dicom/`` with ``dicom.csv``), and a
    COVID-19 collection metadata file: the real samples' licences keep them out of the repository."""
    from pathlib import Path

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "dicom").mkdir(exist_ok=True)
    gray = (xray_pixels(288, 320, seed=1) * 255).round().astype(np.uint8)
    tinted = np.stack([gray, (gray * 0.95).astype(np.uint8), (gray * 0.9).astype(np.uint8)], axis=-1)
    alpha = np.full(gray.shape, 255, np.uint8)
    images = {  # file: (bytes, colour mode as metadata.csv has it)
        "xray-L.jpg": (encoded(gray, "JPEG", quality=90), "L"),
        "xray-RGB.jpg": (encoded(tinted, "JPEG", quality=90), "RGB"),
        "xray-L.png": (encoded(gray[:256, :240], "PNG"), "L"),
        "xray-RGB.png": (encoded(tinted[:200], "PNG"), "RGB"),
        "xray-RGBA.png": (encoded(np.dstack([tinted, alpha]), "PNG"), "RGBA"),
        "xray-16bit.png": (encoded((xray_pixels(240, 200, seed=2) * 65535).astype(np.uint16), "PNG"), "L"),
    }
    rows = ["file,width,height,color_mode"]
    for name, (data, mode) in images.items():
        (root / "images" / name).write_bytes(data)
        with Image.open(io.BytesIO(data)) as im:
            rows.append(f"{name},{im.width},{im.height},{mode}")
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")

    chest8 = (xray_pixels(256, 224, seed=3) * 254).round().astype(np.uint8)
    baseline = encoded(chest8, "JPEG", quality=95)
    chest15 = (xray_pixels(300, 260, seed=4) * 32767).round().astype(np.uint16)
    chest10 = ((1 - xray_pixels(220, 220, seed=5)) * 1023).round().astype(np.uint16)  # MONOCHROME1: dark is high
    dicoms = {  # file: (bytes, photometric, rows, columns)
        **{name: (compressed_dicom(chest8, photometric, 8, JPEGBaseline8Bit, baseline), photometric, chest8.shape)
           for name, photometric in zip(MONO_TWINS, ("MONOCHROME2", "MONOCHROME1"))},
        "mono1-jpeg2000-15bit.dcm": (compressed_dicom(chest15, "MONOCHROME1", 15, JPEG2000Lossless,
                                                      encoded(chest15, "JPEG2000", no_jp2=True)), "MONOCHROME1",
                                     chest15.shape),
        MONO1_CHEST: (legacy_dicom(chest10, "MONOCHROME1", 10), "MONOCHROME1", chest10.shape),
    }
    rows = ["file,rows,columns,photometric_interpretation"]
    for name, (data, photometric, shape) in dicoms.items():
        (root / "dicom" / name).write_bytes(data)
        rows.append(f"{name},{shape[0]},{shape[1]},{photometric}")
    (root / "dicom" / "dicom.csv").write_text("\n".join(rows) + "\n")

    # PA X-rays with a finding are kept when their image exists; the rest is counted by reason
    (root / COVID_METADATA).write_text(
        "patientid,finding,view,modality,folder,filename\n"
        "1,COVID-19,PA,X-ray,images,xray-L.jpg\n"
        "2,\"COVID-19, ARDS\",PA,X-ray,images,xray-RGB.jpg\n"
        "3,Streptococcus,PA,X-ray,images,xray-L.png\n"
        "4,No Finding,PA,X-ray,images,gone-1.jpg\n"
        "5,COVID-19,PA,X-ray,images,gone-2.jpg\n"
        "6,COVID-19,AP,X-ray,images,xray-RGBA.png\n"
        "7,Pneumonia,AP Supine,X-ray,images,gone-3.jpg\n"
        "8,COVID-19,PA,CT,images,xray-RGB.png\n"
        "9,todo,PA,X-ray,images,xray-16bit.png\n"
    )
