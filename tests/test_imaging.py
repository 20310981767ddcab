"""Decoding every sample X-ray and DICOM, generated edge cases, and the shared preprocessing."""

import csv
import io
from pathlib import PurePosixPath

import numpy as np
import pyarrow as pa
import pydicom
import pytest
import torch
from PIL import Image

from dualcam.io.checkpoints import ExpertMeta
from dualcam.io.imaging import (
    IMAGE_SUFFIXES,
    MAX_PIXEL_BYTES,
    MAX_PIXELS,
    DecodeError,
    decode_image,
    image_names,
    is_image_name,
    max_decoded_bytes,
    model_input,
    preprocess,
)

from conftest import xray_sample_sets
from samples import dicom_bytes, png16_bytes, png_bytes, png_header_only


def sample_rows(csv_name: str) -> list:
    """One case per file listed in ``csv_name`` of every sample folder (generated, and shared when present)."""
    cases = []
    for samples in xray_sample_sets():
        with open(samples.path / csv_name, newline="") as f:
            cases += [pytest.param(samples, row, id=f"{samples.name}-{row['file']}") for row in csv.DictReader(f)]
    return cases


@pytest.mark.parametrize(("samples", "row"), sample_rows("metadata.csv"))
def test_every_sample_image_decodes(samples, row):
    image = decode_image((samples.path / "images" / row["file"]).read_bytes(), row["file"])
    assert image.dtype == np.float32 and np.isfinite(image).all()
    assert image.min() >= 0.0 and image.max() <= 1.0 and image.max() > image.min()
    assert image.shape[:2] == (int(row["height"]), int(row["width"]))
    assert image.ndim == (2 if row["color_mode"] == "L" else 3)


@pytest.mark.parametrize(("samples", "row"), sample_rows("dicom/dicom.csv"))
def test_every_sample_dicom_decodes(samples, row):
    data = (samples.path / "dicom" / row["file"]).read_bytes()
    image = decode_image(data, row["file"])
    assert image.dtype == np.float32 and np.isfinite(image).all()
    assert image.shape == (int(row["rows"]), int(row["columns"]))
    # brightness follows the stored values, against them for MONOCHROME1
    raw = decode_raw_dicom(data).astype(np.float64)
    correlation = np.corrcoef(raw.ravel()[::7], image.ravel()[::7])[0, 1]
    assert correlation > 0.9 if row["photometric_interpretation"] == "MONOCHROME2" else correlation < -0.9


def decode_raw_dicom(data: bytes) -> np.ndarray:
    """The stored pixel values, with no display transform, straight from pydicom."""
    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    if "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    return ds.pixel_array


def test_monochrome1_is_the_inverse_of_its_monochrome2_twin(xray_samples):
    mono2, mono1 = xray_samples.mono_twins
    a = decode_image((xray_samples.path / "dicom" / mono2).read_bytes(), mono2)
    b = decode_image((xray_samples.path / "dicom" / mono1).read_bytes(), mono1)
    np.testing.assert_allclose(b, 1.0 - a, atol=1e-6)


def test_monochrome1_chest_has_dark_lungs(xray_samples):
    # Lungs are dark and the mediastinum bright on a correctly displayed chest film.
    name = xray_samples.mono1_chest
    image = decode_image((xray_samples.path / "dicom" / name).read_bytes(), name)
    h, w = image.shape
    rows = slice(h // 3, 2 * h // 3)
    lungs = np.r_[image[rows, w // 5: 2 * w // 5].ravel(), image[rows, 3 * w // 5: 4 * w // 5].ravel()]
    mediastinum = image[h // 3: 2 * h // 3, 9 * w // 20: 11 * w // 20]
    assert lungs.mean() < mediastinum.mean()


def test_16_bit_grayscale_png_keeps_its_depth():
    ramp = np.linspace(0, 65535, 64 * 32).astype(np.uint16).reshape(64, 32)
    data = png_bytes(ramp)
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    np.testing.assert_allclose(decode_image(data, "ramp16.png"), ramp / 65535.0, atol=1e-7)


def test_16_bit_png_holding_12_bit_values_is_not_too_dark():
    twelve = np.linspace(0, 4095, 600 * 500).round().reshape(600, 500)
    stored_as_measured = png16_bytes(twelve, 12)
    scaled_as_the_spec_asks = png16_bytes(np.round(twelve * 65535 / 4095), 12)
    np.testing.assert_allclose(decode_image(stored_as_measured, "12bit.png"), twelve / 4095, atol=1e-6)
    np.testing.assert_allclose(decode_image(scaled_as_the_spec_asks, "12bit.png"), twelve / 4095, atol=0.5 / 65535)
    # the model's input path reads sBIT the same way (it reduces this image 2 x 2 first)
    meta = ExpertMeta(arch="resnet18", class_name="x", input_size=128, mean=(0.0,) * 3, std=(1.0,) * 3)
    x, size = model_input(stored_as_measured, "12bit.png", meta)
    assert size == (600, 500) and x.max() == pytest.approx(1.0, abs=0.01) and x.mean() == pytest.approx(0.5, abs=0.01)
    # without sBIT nothing says the values are 12-bit: divided by 65535, as stored
    np.testing.assert_allclose(decode_image(png16_bytes(twelve), "no-sbit.png"), twelve / 65535, atol=1e-6)


def test_rgba_png_drops_alpha():
    rgba = np.random.default_rng(0).integers(0, 256, (20, 30, 4), dtype=np.uint8)
    image = decode_image(png_bytes(rgba), "rgba.png")
    assert image.shape == (20, 30, 3)
    np.testing.assert_allclose(image, rgba[..., :3] / 255.0, atol=1e-7)


def test_palette_png_becomes_rgb_and_one_pixel_image_works():
    pal = Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).convert("P")
    buf = io.BytesIO()
    pal.save(buf, format="PNG")
    np.testing.assert_allclose(decode_image(buf.getvalue(), "p.png"), np.asarray(pal.convert("RGB")) / 255.0, atol=1e-6)
    tiny = decode_image(png_bytes(np.array([[128]], np.uint8)), "1x1.png")
    assert tiny.shape == (1, 1) and tiny[0, 0] == pytest.approx(128 / 255.0)


def test_grayscale_jpeg():
    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16), 100, np.uint8)).save(buf, format="JPEG", quality=95)
    image = decode_image(buf.getvalue(), "x.jpg")
    assert image.shape == (16, 16) and abs(image.mean() - 100 / 255.0) < 0.01


def test_truncated_files_are_refused():
    png = png_bytes(np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8))
    with pytest.raises(DecodeError, match=r"^cut.png: corrupt or truncated PNG"):
        decode_image(png[: len(png) // 2], "cut.png")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64), dtype=np.uint8)).save(buf, format="JPEG")
    with pytest.raises(DecodeError, match=r"^cut.jpg: corrupt or truncated JPEG"):
        decode_image(buf.getvalue()[:300], "cut.jpg")


def test_empty_and_non_image_files_are_refused():
    with pytest.raises(DecodeError, match=r"^empty.png: empty file \(0 bytes\)"):
        decode_image(b"", "empty.png")
    with pytest.raises(DecodeError, match=r"^notes.png: not a PNG, JPEG or DICOM file"):
        decode_image(b"these are not the pixels you are looking for", "notes.png")
    with pytest.raises(DecodeError, match=r"^s3://b/README: "):
        decode_image(b"plain text with no extension" * 10, "s3://b/README")


def test_decompression_bomb_is_refused_before_decoding():
    with pytest.raises(DecodeError, match=r"^bomb.png: .*10000000000 pixels.*decompression bomb"):
        decode_image(png_header_only(100_000, 100_000), "bomb.png")
    with pytest.raises(DecodeError, match=r"^big.png: header claims 8000 x 7000 pixels, over the limit of 50000000"):
        decode_image(png_header_only(8000, 7000), "big.png")
    with pytest.raises(DecodeError, match=r"^big.png: header claims 8000 x 7000 pixels"):
        model_input(png_header_only(8000, 7000), "big.png", META)
    assert MAX_PIXELS >= 4300 * 4300


def _dicom_of(pixels: np.ndarray, bits: int, samples: int = 1, frames: int = 1) -> bytes:
    """A DICOM of ``pixels`` (rows, cols[, samples]) stored in ``bits``-bit samples, ``frames`` times over."""
    rows, cols = pixels.shape[:2]
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(rows, cols, np.zeros((rows, cols)))))
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    if samples > 1:
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = samples, "RGB", 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = np.concatenate([pixels.astype(f"<u{bits // 8}").ravel()] * frames).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def test_decoded_size_is_bounded_in_bytes_not_only_in_pixels():
    rgb = np.random.default_rng(5).integers(0, 256, (10, 10, 3))
    # 100 pixels of 3 16-bit samples: 600 bytes, what 100 pixels may take; decoded
    np.testing.assert_allclose(decode_image(_dicom_of(rgb, 16, 3), "rgb16.dcm", max_pixels=100), rgb / 65535, atol=1e-6)
    # the same pixels in 32-bit samples: within the pixel limit, twice the byte limit
    with pytest.raises(DecodeError, match=r"^rgb32.dcm: header claims 10 x 10 pixels of 12 bytes: 1,200 bytes decoded, "
                                          r"over the limit of 600 \(dualcam.MAX_PIXELS x 6 bytes\); not decoded"):
        decode_image(_dicom_of(rgb, 32, 3), "rgb32.dcm", max_pixels=100)
    with pytest.raises(DecodeError, match=r"^frames.dcm: header claims 10 x 10 pixels of 2 bytes in 4 frames: 800 "):
        model_input(_dicom_of(rgb[..., 0], 16, frames=4), "frames.dcm", META, max_pixels=100)
    assert MAX_PIXEL_BYTES * MAX_PIXELS == max_decoded_bytes() == 300_000_000


def _jpeg_dicom(side: int, rows: int = 8) -> bytes:
    """A JPEG-baseline DICOM whose header claims ``rows`` x ``rows`` pixels and whose frame is ``side`` x ``side``."""
    frame = io.BytesIO()
    Image.new("L", (side, side)).save(frame, "JPEG")
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(rows, rows, np.zeros((rows, rows)))))
    ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEGBaseline8Bit
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = pydicom.encaps.encapsulate([frame.getvalue()])
    ds["PixelData"].VR = "OB"
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def test_a_dicom_frame_larger_than_its_header_is_refused_at_dualcams_limit_before_decoding():
    assert Image.MAX_IMAGE_PIXELS == MAX_PIXELS
    # 50.4 MP: over dualcam's limit, under Pillow's default one (89 MP), in a file whose header claims 8 x 8
    with pytest.raises(DecodeError, match=r"^lying.dcm: its compressed pixel data holds a frame of 50410000 pixels, "
                                          r"over the limit of 50000000 \(dualcam.MAX_PIXELS\), though its header "
                                          r"claims 8 x 8: refusing a possible decompression bomb"):
        decode_image(_jpeg_dicom(7100), "lying.dcm")
    with pytest.raises(DecodeError, match=r"^small-lie.dcm: its compressed frame is 64 x 64 pixels, though its header "
                                          r"claims 8 x 8; not decoded"):
        decode_image(_jpeg_dicom(64), "small-lie.dcm")
    assert decode_image(_jpeg_dicom(8), "honest.dcm").shape == (8, 8)


def test_generated_dicom_with_window_and_rescale():
    pixels = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) % 4096
    data = dicom_bytes(64, 64, pixels)
    image = decode_image(data, "gen.dcm")
    np.testing.assert_allclose(image, pixels / pixels.max(), atol=1e-6)
    ds = pydicom.dcmread(io.BytesIO(data))
    # modality values are 2 * stored - 1000; the window [0, 2000] of them is stored [500, 1500]
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 2, -1000, "US"
    ds.WindowCenter, ds.WindowWidth = 1000, 2000
    buf = io.BytesIO()
    ds.save_as(buf)
    windowed = decode_image(buf.getvalue(), "windowed.dcm")
    assert windowed[pixels < 495].max() == 0.0 and windowed[pixels > 1505].min() == 1.0
    inside = (pixels > 520) & (pixels < 1480)
    np.testing.assert_allclose(windowed[inside], (pixels[inside] - 500) / 1000, atol=2e-3)


def test_legacy_dicom_named_by_uid_decodes():
    pixels = (np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 3) % 4096
    data = dicom_bytes(32, 32, pixels, preamble=False)
    assert data[128:132] != b"DICM"
    np.testing.assert_allclose(decode_image(data, "s3://pacs/1.2.840.113619.2.55"), pixels / pixels.max(), atol=1e-6)
    assert is_image_name("s3://pacs/1.2.840.113619.2.55") and is_image_name("scan/IM0001.IMA")


def test_colour_dicoms():
    rgb = np.random.default_rng(4).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(8, 8, np.zeros((8, 8)))))
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = rgb.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf)
    np.testing.assert_allclose(decode_image(buf.getvalue(), "rgb.dcm"), rgb / 255.0, atol=1e-6)

    index = np.arange(16, dtype=np.uint8).reshape(4, 4) % 4
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(4, 4, np.zeros((4, 4)))))
    ds.PhotometricInterpretation, ds.BitsAllocated, ds.BitsStored, ds.HighBit = "PALETTE COLOR", 8, 8, 7
    ds.PixelData = index.tobytes()
    lut = {"Red": [65535, 0, 0, 65535], "Green": [0, 65535, 0, 65535], "Blue": [0, 0, 65535, 65535]}
    for colour, entries in lut.items():
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [4, 0, 16])
        ds[f"{colour}PaletteColorLookupTableDescriptor"].VR = "US"
        setattr(ds, f"{colour}PaletteColorLookupTableData", np.array(entries, np.uint16).tobytes())
    buf = io.BytesIO()
    ds.save_as(buf)
    image = decode_image(buf.getvalue(), "palette.dcm")
    expected = np.stack([np.array(lut[c])[index] / 65535.0 for c in ("Red", "Green", "Blue")], axis=-1)
    np.testing.assert_allclose(image, expected, atol=1e-6)


def test_dicom_without_pixels_truncated_or_too_large_is_refused():
    with pytest.raises(DecodeError, match=r"^nopix.dcm: DICOM file has no pixel data"):
        decode_image(dicom_bytes(16, 16, None), "nopix.dcm")
    whole = dicom_bytes(64, 64, np.ones((64, 64)))
    with pytest.raises(DecodeError, match=r"^cut.dcm: DICOM file has no pixel data \(or is truncated before it\)"):
        decode_image(whole[:300], "cut.dcm")
    with pytest.raises(DecodeError, match=r"^cut-pixels.dcm: cannot decode DICOM pixel data"):
        decode_image(whole[: len(whole) - 4000], "cut-pixels.dcm")
    ds = pydicom.dcmread(io.BytesIO(whole))
    ds.Rows = None
    buf = io.BytesIO()
    ds.save_as(buf)
    with pytest.raises(DecodeError, match=r"^norows.dcm: header claims an empty image"):
        decode_image(buf.getvalue(), "norows.dcm")
    with pytest.raises(DecodeError, match=r"^huge.dcm: header claims 60000 x 60000 pixels"):
        decode_image(dicom_bytes(60000, 60000, np.zeros((2, 2))), "huge.dcm")


def test_image_names():
    assert is_image_name("a/b.PNG") and is_image_name("s3://b/x.dcm") and is_image_name("dicom/IM0001")
    assert not is_image_name("a/metadata.csv") and not is_image_name("a/.hidden")
    assert not is_image_name("a/._x.png") and not is_image_name("s3://b/.cache/.x.dcm")


def test_image_names_in_arrow_follow_the_suffix_as_pathlib_reads_it():
    def by_pathlib(name: str) -> bool:  # the rule as it was written before names were matched in Arrow
        path = PurePosixPath(name)
        suffix = path.suffix.lower()
        return not path.name.startswith(".") and (suffix in IMAGE_SUFFIXES or suffix[1:].isdigit() or suffix == "")

    names = ["b.png", "s/a.JPG", "s/IM0001", "s/1.2.840.1", "notes.txt", "x/.hidden", "x/._a.png", "a.", "a..", "a.b.",
             "x.tar.png", "x.png.txt", "s3://b/k/x.Dicom", "x.IMA", "a", "/d.d/file", "/d.png/f.txt", "ü/ß.dcm",
             "sp ace.jpeg", "x.JpEg", "x.jpe", "x.0", "x.0a", "dir/..", "x.png\n", "new\nline.png", "x.1234567890"]
    expected = [by_pathlib(name) for name in names]
    assert [is_image_name(name) for name in names] == expected
    assert image_names(pa.array(names)).to_pylist() == expected
    assert expected.count(True) == 18


META = ExpertMeta(arch="resnet18", class_name="COVID-19", input_size=64)


def test_preprocess_shape_and_normalization():
    x = preprocess(np.full((300, 200), 0.5, np.float32), META)
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    expected = [(0.5 - m) / s for m, s in zip(META.mean, META.std)]
    torch.testing.assert_close(x.mean(dim=(1, 2)), torch.tensor(expected))


def test_preprocess_gray_and_gray_stored_as_rgb_agree():
    gray = np.random.default_rng(3).random((120, 90), dtype=np.float32)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    torch.testing.assert_close(preprocess(gray, META), preprocess(rgb, META), atol=1e-5, rtol=1e-5)


def test_preprocess_rgb_mode_keeps_colour():
    meta = ExpertMeta(arch="resnet18", class_name="car", input_size=64, color_mode="RGB")
    image = np.zeros((64, 64, 3), np.float32)
    image[..., 0] = 1.0
    x = preprocess(image, meta)
    assert x[0].mean() > x[1].mean()


def test_preprocess_refuses_bad_shapes():
    with pytest.raises(ValueError, match="expects"):
        preprocess(np.zeros((4, 4, 4), np.float32), META)


@pytest.mark.parametrize("data, looks", [
    (b"[default]\naws_secret_access_key = wJalrXUtnFEMI/K7MDENG\n", "it looks like text"),
    (b"GIF89a\x01\x00\x01\x00", "it looks like a GIF"),
    (bytes(range(256)), "binary data"),
])
def test_a_file_that_is_no_image_is_described_never_quoted(data, looks):
    with pytest.raises(DecodeError) as refused:
        decode_image(data, "/root/.aws/credentials")
    message = str(refused.value)
    assert f"not a PNG, JPEG or DICOM file ({looks})" in message
    assert "default" not in message and "wJalr" not in message and "GIF89" not in message
