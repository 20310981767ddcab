"""Scoring straight from a PACS: DICOMweb input against a real Orthanc (``dualcam.bench.pacs``) on 127.0.0.1.

The PACS holds radiographs made from sample X-rays in several studies, series, dates and modalities,
and the real DICOM files of the sample sets; the tests reach it through a TCP proxy of their own
that counts the requests in flight and can stop the PACS after a given number of retrievals.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import os
import select
import socket
import subprocess
import sys
import threading
import time
import urllib.error
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pydicom
import pytest
from pydicom.uid import generate_uid

from dualcam import DualScorer
from dualcam.bench import pacs as test_pacs
from dualcam.distributed.pipeline import score_archive
from dualcam.io import dicomweb
from dualcam.io.results import PERMANENT, TRANSIENT, error_kind_of, read_results, to_numpy
from dualcam.scoring.scorers import score_images

from conftest import xray_sample_sets
from samples import xray_pixels

INPUT_SIZE = 64  # of the experts (conftest's fixture)
TODAY = datetime.date(2026, 12, 7)
QUERY_DAY, OUTAGE_DAY = datetime.date(2026, 12, 5), datetime.date(2026, 12, 6)
"""Radiographs of the query tests (3 studies, CR and DX, one OT) and of the outage tests (24 CRs)."""


# ---- the input, parsed: no PACS needed ----------------------------------------------------------------

def test_dates_resolve_to_the_days_they_name():
    query = dicomweb.parse("dicomweb://pacs:8042/dicom-web?StudyDate=yesterday&SeriesDate=today-7-today"
                           "&AccessionNumber=today", today=TODAY)
    assert query.root == "http://pacs:8042/dicom-web"
    assert dict(query.params) == {"StudyDate": "20261206", "SeriesDate": "20261130-20261207",
                                  "AccessionNumber": "today"}  # only *Date attributes are dates
    assert dicomweb.parse("dicomwebs://pacs/dw/?Modality=MR").root == "https://pacs/dw"


def test_modalities_default_to_radiographs_unless_the_query_names_one():
    assert dicomweb.parse("dicomweb://pacs/dw?StudyDate=20261206").modalities == ("CR", "DX")
    assert dicomweb.parse("dicomweb://pacs/dw?Modality=MR").modalities is None


def test_patient_columns_only_when_asked_for():
    assert dicomweb.parse("dicomweb://pacs/dw").extra_columns == {}
    asked = dicomweb.parse("dicomweb://pacs/dw?includefield=PatientID,PatientName&includefield=AccessionNumber")
    assert asked.extra_columns == {"patient_id": "00100020", "patient_name": "00100010",
                                   "accession_number": "00080050"}
    with pytest.raises(ValueError, match="'PatientNom' is not a DICOM keyword"):
        dicomweb.parse("dicomweb://pacs/dw?includefield=PatientNom")


@pytest.mark.parametrize("uri, message", [
    ("dicomweb://alice:s3cret@pacs/dw", "credentials do not belong in the input"),
    ("dicomweb:///dw", "dicomweb://HOST"),
    ("dicomweb://pacs/dw?limit=10", "limit is dualcam's to set"),
])
def test_unusable_inputs_are_refused_without_quoting_a_password(uri, message):
    with pytest.raises(ValueError, match=message) as refused:
        dicomweb.parse(uri)
    assert "s3cret" not in str(refused.value)


def test_credentials_come_from_the_environment_or_a_file(monkeypatch, tmp_path):
    for name in (dicomweb.ENV_TOKEN, dicomweb.ENV_USER, dicomweb.ENV_PASSWORD):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(f"{name}_FILE", raising=False)
    assert dicomweb.credentials() == {}
    monkeypatch.setenv(dicomweb.ENV_USER, "alice")
    (tmp_path / "password").write_text("s3cret\n")
    monkeypatch.setenv(f"{dicomweb.ENV_PASSWORD}_FILE", str(tmp_path / "password"))
    assert dicomweb.credentials() == test_pacs.auth_header("alice", "s3cret")
    monkeypatch.setenv(dicomweb.ENV_TOKEN, "tok")  # a token wins: the cloud stores' way
    assert dicomweb.credentials() == {"Authorization": "Bearer tok"}


def test_the_first_part_of_a_multipart_answer_is_the_file():
    body = b"--b1\r\nContent-Type: application/dicom\r\n\r\nDICM\r\n--x\r\n--b1--\r\n"
    assert dicomweb.first_part(body, 'multipart/related; type="application/dicom"; boundary=b1', "u") == b"DICM\r\n--x"
    assert dicomweb.first_part(b"DICM", "application/dicom", "u") == b"DICM"
    with pytest.raises(OSError, match="cut short"):
        dicomweb.first_part(body[:30], "multipart/related; boundary=b1", "u")



@pytest.mark.parametrize("code, kind", [(404, PERMANENT), (400, PERMANENT), (401, TRANSIENT), (403, TRANSIENT),
                                        (429, TRANSIENT), (500, TRANSIENT), (503, TRANSIENT)])
def test_an_http_status_gives_its_error_kind(code, kind):
    """A missing instance is permanent; throttling, a server error or refused credentials mid-run are retried."""
    assert error_kind_of(dicomweb._http_error("http://pacs/dw/studies/1/series/2/instances/3", code, "x")) == kind


def test_a_server_that_does_not_answer_in_time_is_a_transient_error():
    with socket.create_server(("127.0.0.1", 0)) as silent:  # takes the connection, never answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/dw/studies/1/series/2/instances/3"
        started = time.monotonic()
        with pytest.raises(OSError, match="did not answer") as late:
            dicomweb.retrieve(url, timeout=0.5)
    assert error_kind_of(late.value) == TRANSIENT and time.monotonic() - started < 10

# ---- a real PACS -------------------------------------------------------------------------------------

class CountingProxy:
    """A TCP proxy on 127.0.0.1 in front of the PACS. A request is in flight from its connection until
    the PACS has answered it whole (urllib opens one connection per request); ``delay`` seconds of
    that are the proxy's, a slow PACS. ``after(n, action)`` runs ``action`` once ``n`` instances
    have been retrieved through it."""

    def __init__(self, upstream: int, delay: float = 0.0) -> None:
        self.upstream, self.delay = upstream, delay
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.in_flight = self.most = self.retrieved = 0
        self.trigger: tuple[int, Callable[[], None]] | None = None
        threading.Thread(target=self._accept, daemon=True).start()

    def after(self, retrievals: int, action: Callable[[], None]) -> None:
        self.trigger = (retrievals, action)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with self.lock:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
        first_line = b""
        try:
            time.sleep(self.delay)
            with socket.create_connection(("127.0.0.1", self.upstream)) as upstream:
                first_line = self._relay(client, upstream)
        except OSError:
            pass  # the PACS is down: the client sees its connection closed
        finally:
            with self.lock:
                self.in_flight -= 1
            client.close()
        if b"/instances/" in first_line:
            self._retrieved()

    @staticmethod
    def _relay(client: socket.socket, upstream: socket.socket) -> bytes:
        """Bytes both ways until the PACS has answered and closed; the request's first line."""
        first = b""
        while True:
            ready, _, _ = select.select([client, upstream], [], [], 30)
            if not ready:
                return first
            for sock in ready:
                data = sock.recv(65536)
                if not data:
                    return first
                if sock is client:
                    first = first or data.split(b"\r\n", 1)[0]
                    upstream.sendall(data)
                else:
                    client.sendall(data)

    def _retrieved(self) -> None:
        with self.lock:
            self.retrieved += 1
            due = self.trigger is not None and self.retrieved == self.trigger[0]
        if due and self.trigger is not None:
            self.trigger[1]()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture(scope="module")
def pacs(tmp_path_factory, pacs_account):
    """Orthanc loaded with: on ``QUERY_DAY`` 3 studies (CR, DX and one OT instance that is not scored),
    on ``OUTAGE_DAY`` one study of 24 CRs, and the DICOM files of the sample sets (real ones included
    when ../shared is present). Yields (server, {day: [(study, series, sop, modality)]}, {sop: file})."""
    if (why := test_pacs.missing()) is not None:
        pytest.skip(why)
    with test_pacs.OrthancServer(tmp_path_factory.mktemp("orthanc")) as server:  # stopped however the tests end
        yield server, *_load(server)


def _load(server: test_pacs.OrthancServer) -> tuple[dict[datetime.date, list[tuple[str, str, str, str]]],
                                                   dict[str, object]]:
    """What the ``pacs`` fixture stores: (the generated instances by day, {SOP UID: file} of the sample sets')."""
    stored: dict[datetime.date, list[tuple[str, str, str, str]]] = {QUERY_DAY: [], OUTAGE_DAY: []}
    layout = {QUERY_DAY: [("CR", 2), ("DX", 2), ("CR", 1)], OUTAGE_DAY: [("CR", 24)]}
    seed = 0
    for day, studies in layout.items():
        for modality, count in studies:
            study, series = generate_uid(), generate_uid()
            for _ in range(count):
                seed += 1
                pixels = xray_pixels(72 + seed % 5, 64 + seed % 7, seed).astype(np.uint8)
                sop, data = test_pacs.radiograph_dicom(pixels, study, series, day, modality)
                server.store(data)
                stored[day].append((study, series, sop, modality))
    _, other = test_pacs.radiograph_dicom(np.zeros((8, 8), np.uint8), stored[QUERY_DAY][0][0], generate_uid(),
                                          QUERY_DAY, "OT")
    server.store(other)  # a secondary capture in the first study: listed, never scored
    files = {}
    for samples in xray_sample_sets():
        for path in sorted((samples.path / "dicom").glob("*.dcm")):
            sop = pydicom.dcmread(path, stop_before_pixels=True, force=True).get("SOPInstanceUID")
            if sop and sop not in files:
                with contextlib.suppress(urllib.error.HTTPError):  # Orthanc refuses a file without a preamble
                    server.store(_in_a_study(path))
                    files[str(sop)] = path
    assert files, "no sample DICOM file was stored"
    return stored, files


def _in_a_study(path: Path) -> bytes:
    """A sample DICOM file as a PACS takes it: with study and series UIDs (the generated samples have none,
    and Orthanc refuses an instance without them); its pixels, as stored, unchanged."""
    dataset = pydicom.dcmread(path, force=True)
    if "StudyInstanceUID" in dataset and "SeriesInstanceUID" in dataset:
        return path.read_bytes()
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = generate_uid(), generate_uid()
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    return buffer.getvalue()


def _uri(root: str, study: str, series: str, sop: str) -> str:
    return f"{root}/studies/{study}/series/{series}/instances/{sop}"


def test_a_query_scores_exactly_its_instances_each_once_and_a_rerun_scores_nothing(
        ray_cluster, experts, pacs, tmp_path):
    server, stored, _ = pacs
    out = str(tmp_path / "out")
    query = server.dicomweb("StudyDate=20261205")
    summary = score_archive(*experts, query, out, batch_size=4, progress=False)
    expected = {_uri(f"{server.url}/dicom-web", *entry[:3]) for entry in stored[QUERY_DAY]}
    rows = read_results(out)
    assert sorted(rows.column("uri").to_pylist()) == sorted(expected)  # each once, the OT one left out
    assert (summary.inputs, summary.scored_now, summary.ok, summary.errors, len(summary.skipped)) == (5, 5, 5, 0, 1)
    assert "modality not CR or DX" in summary.line()
    by_sop = {row["sop_uid"]: row for row in rows.select(
        ["sop_uid", "study_uid", "series_uid", "study_date", "modality", "view_position"]).to_pylist()}
    found = {(r["study_uid"], r["series_uid"], sop, r["modality"]) for sop, r in by_sop.items()}
    assert found == set(stored[QUERY_DAY])
    assert {(r["study_date"], r["view_position"]) for r in by_sop.values()} == {("20261205", "PA")}
    assert not [name for name in rows.column_names if name.startswith("patient")]  # none asked for
    again = score_archive(*experts, query, out, batch_size=4, progress=False)
    assert (again.scored_now, again.already_done, read_results(out).num_rows) == (0, 5, 5)


def test_a_search_pages_through_every_match(pacs, monkeypatch):
    server, stored, _ = pacs
    monkeypatch.setattr(dicomweb, "PAGE_SIZE", 5)  # 24 instances: 5 pages, then an empty one ends the search
    instances, skipped = dicomweb.search(server.dicomweb("StudyDate=20261206"))
    expected = sorted(_uri(f"{server.url}/dicom-web", *entry[:3]) for entry in stored[OUTAGE_DAY])
    assert instances.column("uri").to_pylist() == expected and skipped.num_rows == 0


def test_instances_from_the_pacs_score_as_the_same_files_on_disk(ray_cluster, experts, pacs, tmp_path):
    server, _, files = pacs
    out = str(tmp_path / "out")
    score_archive(*experts, server.dicomweb("SOPInstanceUID=" + ",".join(files)), out, batch_size=4, progress=False)
    rows = read_results(out, ["sop_uid", "status", "p1", "heatmap"])
    assert sorted(rows.column("sop_uid").to_pylist()) == sorted(files)
    local = score_images(DualScorer(*experts), [str(files[sop]) for sop in rows.column("sop_uid").to_pylist()])
    assert rows.column("status").to_pylist() == local.column("status").to_pylist()
    assert "ok" in rows.column("status").to_pylist()
    ok = pc.equal(rows.column("status"), "ok")
    np.testing.assert_allclose(rows.filter(ok).column("p1").to_numpy(), local.filter(ok).column("p1").to_numpy(),
                               rtol=1e-5)
    heatmaps = [to_numpy(table.filter(ok).column("heatmap")) for table in (rows, local)]
    np.testing.assert_allclose(*heatmaps, rtol=1e-4, atol=1e-6)


def test_a_dry_run_counts_what_the_query_matches(experts, pacs, tmp_path):
    server, _, _ = pacs
    out = tmp_path / "out"
    result = _cli(["score", "--expert1", experts[0], "--expert2", experts[1], "--input",
                   server.dicomweb("StudyDate=20261205"),
                   "--output", str(out), "--dry-run"])
    assert result.returncode == 0, result.stderr
    assert "inputs                   5" in result.stdout
    assert "skipped                  1  (modality not CR or DX): modality OT 1" in result.stdout
    assert not out.exists()


def test_a_wrong_password_ends_in_one_line_exit_2_before_any_work(experts, pacs, tmp_path):
    server, _, _ = pacs
    out = tmp_path / "out"
    result = _cli(["score", "--expert1", experts[0], "--expert2", experts[1], "--input",
                   server.dicomweb("StudyDate=yesterday"),
                   "--output", str(out)], {dicomweb.ENV_PASSWORD: "not-the-password"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "refused the credentials (HTTP 401" in lines[0], result.stderr
    assert "not-the-password" not in result.stderr + result.stdout
    assert not out.exists()


def _cli(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dualcam.cli", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "RAY_ADDRESS": "", **(env or {})})


def test_the_pacs_stopped_mid_run_gives_transient_rows_that_a_plain_rerun_heals(
        ray_cluster, experts, pacs, tmp_path, observed):
    server, stored, _ = pacs
    proxy = CountingProxy(server.port)
    proxy.after(6, server.stop)
    out, query = str(tmp_path / "out"), server.dicomweb("StudyDate=20261206", port=proxy.port)
    try:
        first = score_archive(*experts, query, out, batch_size=4, progress=False)
    finally:
        server.start()  # the same port and studies, as a PACS back from its restart
    rows = read_results(out, ["uri", "status", "error", "error_kind"])
    errors = rows.filter(pc.equal(rows.column("status"), "error"))
    assert rows.num_rows == len(set(rows.column("uri").to_pylist())) == 24
    assert 0 < errors.num_rows <= 24 - 6 and set(errors.column("error_kind").to_pylist()) == {TRANSIENT}
    assert first.failure() is not None  # more than 5% failed: exit 1 from the command
    healed = score_archive(*experts, query, out, batch_size=4, progress=False)
    rows = read_results(out, ["uri", "status"])
    assert healed.scored_now == errors.num_rows and healed.already_done == 24 - errors.num_rows
    assert rows.num_rows == len(set(rows.column("uri").to_pylist())) == 24
    assert set(rows.column("status").to_pylist()) == {"ok"} and healed.failure() is None
    observed("PACS stopped after 6 retrievals, then a plain rerun", inputs=24, first_run_errors=errors.num_rows,
             rows_after_rerun=rows.num_rows, unique=24, exit_first=1, exit_rerun=0)
    proxy.close()


def test_a_missing_instance_is_a_permanent_error_row(ray_cluster, experts, pacs, tmp_path):
    server, stored, _ = pacs
    study, series, sop, _ = stored[QUERY_DAY][0]
    manifest = tmp_path / "manifest.csv"
    root = f"{server.url}/dicom-web"
    manifest.write_text(f"uri\n{_uri(root, study, series, sop)}\n{_uri(root, study, series, sop + '.9')}\n")
    score_archive(*experts, str(manifest), str(tmp_path / "out"), batch_size=4, progress=False)
    rows = read_results(str(tmp_path / "out"), ["uri", "status", "error", "error_kind"]).sort_by("uri")
    assert rows.column("status").to_pylist() == ["ok", "error"]
    assert rows.column("error_kind").to_pylist() == [None, PERMANENT]
    assert "HTTP 404" in rows.column("error")[1].as_py()


def test_the_bound_on_requests_in_flight_holds_across_loaders(ray_cluster, experts, pacs, tmp_path):
    server, _, _ = pacs
    proxy = CountingProxy(server.port, delay=0.3)
    query = server.dicomweb("StudyDate=20261206", port=proxy.port)
    summary = score_archive(*experts, query, str(tmp_path / "out"), batch_size=4, progress=False, pacs_requests=2)
    proxy.close()
    assert summary.ok == 24
    # 2 loaders of 8 threads each would put up to 16 requests in flight; the run's gate keeps it to 2
    assert proxy.most == 2, proxy.most


def test_pacs_requests_is_checked_before_any_work(experts, tmp_path):
    result = _cli(["score", "--expert1", experts[0], "--expert2", experts[1], "--input", "dicomweb://127.0.0.1:9/dw",
                   "--output", str(tmp_path / "out"), "--pacs-requests", "0"])
    assert result.returncode == 2 and "pacs_requests must be an integer >= 1" in result.stderr


def test_an_instance_over_the_byte_limit_is_refused(pacs):
    server, stored, _ = pacs
    url = _uri(f"{server.url}/dicom-web", *stored[QUERY_DAY][0][:3])
    size = len(dicomweb.retrieve(url))
    with pytest.raises(OSError, match=rf"over the limit of {size - 1:,} per input") as big:
        dicomweb.retrieve(url, max_bytes=size - 1)
    assert error_kind_of(big.value) == PERMANENT
