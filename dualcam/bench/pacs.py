"""A real PACS on 127.0.0.1 for the tests and the benches: Orthanc with its DICOMweb plugin (Debian's
``orthanc`` and ``orthanc-dicomweb`` packages), and radiographs made into DICOM files to load it with.

``OrthancServer(folder)`` writes its configuration and storage under ``folder``; ``start()`` returns
once it answers, ``stop()`` ends it, and ``start()`` again brings it back on the same port with the
same studies (what a PACS restarted overnight does). It takes basic auth (``USER``/``PASSWORD``),
refuses remote access and runs no DICOM (DIMSE) listener: every request stays on loopback.
"""

from __future__ import annotations

import base64
import datetime
import io
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from dualcam.bench.s3server import HOST, free_port

EXECUTABLE = "Orthanc"
PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
INSTALL = "apt-get update && apt-get install -y orthanc orthanc-dicomweb"
"""How to get Orthanc and its DICOMweb plugin on Debian or Ubuntu (as root)."""
USER, PASSWORD = "dualcam", "pacs-test-password"
"""The one account of a test PACS; nothing but loopback can reach it."""
SOP_CLASSES = {"CR": "1.2.840.10008.5.1.4.1.1.1", "DX": "1.2.840.10008.5.1.4.1.1.1.1",
               "OT": "1.2.840.10008.5.1.4.1.1.7"}
"""Storage SOP classes: computed radiography, digital X-ray (for presentation), secondary capture."""


def missing() -> str | None:
    """Why no test PACS can start here (and how to install it), or None when it can."""
    if shutil.which(EXECUTABLE) is None or not PLUGIN.exists():
        return f"Orthanc with its DICOMweb plugin is not installed ({INSTALL})"
    return None


def auth_header(user: str = USER, password: str = PASSWORD) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


class OrthancServer:
    """Orthanc on 127.0.0.1 with DICOMweb at ``/dicom-web``; a context manager too."""

    def __init__(self, folder: Path, start_timeout: float = 60.0) -> None:
        self.folder = Path(folder)
        self.start_timeout = start_timeout
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def dicomweb(self, query: str = "", port: int | None = None) -> str:
        """The ``dicomweb://`` input of ``query`` on this server (or on a proxy of it at ``port``)."""
        return f"dicomweb://{HOST}:{port or self.port}/dicom-web" + (f"?{query}" if query else "")

    def start(self) -> OrthancServer:
        config = {
            "Name": "dualcam-test", "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "index"), "HttpPort": self.port, "RemoteAccessAllowed": False,
            "DicomServerEnabled": False, "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD},
            "Plugins": [str(PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "orthanc.json").write_text(json.dumps(config, indent=2))
        with open(self.folder / "orthanc.log", "ab") as log:
            self.process = subprocess.Popen([EXECUTABLE, str(self.folder / "orthanc.json")], stdout=log, stderr=log)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}; see {self.folder / 'orthanc.log'}")
            try:
                self.request("GET", "/system")
                return self
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {self.start_timeout:g} s; see {self.folder / 'orthanc.log'}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def request(self, method: str, path: str, data: bytes | None = None) -> bytes:
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=auth_header())
        with urllib.request.urlopen(request, timeout=30) as response:
            body: bytes = response.read()
            return body

    def store(self, dicom: bytes) -> None:
        """Upload one DICOM file (``POST /instances``)."""
        self.request("POST", "/instances", dicom)

    def __enter__(self) -> OrthancServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()


def radiograph_dicom(
    pixels: np.ndarray, study_uid: str, series_uid: str, study_date: datetime.date, modality: str = "CR",
    view_position: str = "PA", sop_uid: str | None = None,
) -> tuple[str, bytes]:
    """(SOP Instance UID, a DICOM file) of a greyscale radiograph (uint8 or uint16 pixels, MONOCHROME2,
    uncompressed) in the given study and series: what a modality sends its PACS, with no patient."""
    sop_uid = sop_uid or str(generate_uid())
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(SOP_CLASSES[modality])
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SOP_CLASSES[modality], sop_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.StudyDate = ds.SeriesDate = study_date.strftime("%Y%m%d")
    ds.Modality, ds.ViewPosition, ds.PatientID = modality, view_position, "ANON"
    bits = 16 if pixels.dtype == np.uint16 else 8
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return sop_uid, buffer.getvalue()
