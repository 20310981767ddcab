"""A PACS as input: a DICOMweb query (QIDO-RS) lists the instances to score, WADO-RS reads each one.

An input ``dicomweb://host:port/path?Key=value&...`` (``dicomwebs://`` for TLS) names a DICOMweb
service (``path`` is its root, e.g. ``/dicom-web``) and an instance query in QIDO-RS's own terms:
``StudyDate=20261206``, ``ModalitiesInStudy=CR``, ``AccessionNumber=...``. Date values may be
``today``, ``yesterday`` or ``today-N`` (days, the driver's local date), alone or in a DICOM range
(``today-7-yesterday``), so a nightly spec says "yesterday's studies" without a wrapper computing
dates. Unless the query names a ``Modality``, only CR and DX instances are scored; the others are
listed as skipped.

Each instance is one row whose ``uri`` is its canonical WADO-RS URL (``http(s)://host:port/path/
studies/S/series/R/instances/I``, never with credentials), beside the columns ``study_uid``,
``series_uid``, ``sop_uid``, ``study_date``, ``modality`` and ``view_position``. Nothing that names a
patient is asked for unless the query asks with QIDO-RS's ``includefield`` (``includefield=PatientID``
adds a ``patient_id`` column): outputs hold as little patient data as the work needs.

Credentials come from the environment, never from the URI (which lands in logs and process
lists): ``DUALCAM_DICOMWEB_TOKEN`` (a bearer token: Google Cloud Healthcare, AWS HealthImaging,
Azure) or ``DUALCAM_DICOMWEB_USER`` and ``DUALCAM_DICOMWEB_PASSWORD`` (basic auth), each also as
``..._FILE``, a file holding the value (a mounted Kubernetes Secret; read at every request, so a
rotated token is picked up). They are sent only to the server named, never logged, never written.

Plain HTTP from the standard library: the two requests dualcam makes (a JSON search, paged, and a
one-part multipart retrieve) need no client library. Errors are ``TransientError`` for what a later
run may not meet again (no answer, 429, 5xx, refused credentials mid-run) and ``FileNotFoundError``
for an instance the server does not have.
"""

from __future__ import annotations

import base64
import datetime
import http.client
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from pydicom.datadict import tag_for_keyword

from dualcam.io.storage import READ_TIMEOUT, StorageError, TransientError, check_size

SCHEMES = {"dicomweb": "http", "dicomwebs": "https"}
"""Input URI scheme -> the scheme of the service's URLs."""
DEFAULT_MODALITIES = ("CR", "DX")
"""Instances scored when the query names no ``Modality``: the modalities of chest radiographs."""
MAX_REQUESTS = 4
"""Default bound on a run's DICOMweb requests in flight at once, across all its loaders (``--pacs-requests``)."""
PAGE_SIZE = 500
"""Instances asked for per search request."""
SEARCH_TIMEOUT = 60.0
"""Seconds one search request may go without an answer."""
ENV_TOKEN, ENV_USER, ENV_PASSWORD = "DUALCAM_DICOMWEB_TOKEN", "DUALCAM_DICOMWEB_USER", "DUALCAM_DICOMWEB_PASSWORD"

_COLUMNS = {"study_uid": "0020000D", "series_uid": "0020000E", "sop_uid": "00080018", "study_date": "00080020",
            "modality": "00080060", "view_position": "00185101"}
"""The columns every DICOMweb row carries, and the DICOM tag each comes from."""
_INSTANCE_URL = re.compile(r"^https?://[^/?#]+(/[^?#]*)?/studies/[^/?#]+/series/[^/?#]+/instances/[^/?#]+$")
_DATE_WORD = re.compile(r"today-(\d+)|today|yesterday")
_ACCEPT_INSTANCE = 'multipart/related; type="application/dicom"; transfer-syntax=*'


class AuthRefused(TransientError):
    """The server refused the credentials (HTTP 401 or 403). Transient for an instance (a token may have
    expired overnight); before any work, a usage error."""


@dataclass(frozen=True)
class Query:
    """A DICOMweb input, parsed: the service's root URL and the search's parameters, dates resolved."""

    root: str
    """``http(s)://host:port/path``: no credentials, no trailing slash."""
    params: tuple[tuple[str, str], ...]
    modalities: tuple[str, ...] | None
    """The modalities kept (``DEFAULT_MODALITIES``), or None when the query names its own."""
    extra_columns: dict[str, str]
    """Column -> tag for each ``includefield`` keyword the user asked for (``patient_id`` -> ``00100020``)."""


def is_dicomweb(uri: str) -> bool:
    """Whether ``uri`` is a DICOMweb input (``dicomweb://`` or ``dicomwebs://``)."""
    return uri.split("://", 1)[0].lower() in SCHEMES and "://" in uri


def is_instance_url(uri: str) -> bool:
    """Whether ``uri`` is a WADO-RS instance URL, as the rows of a DICOMweb input name their inputs."""
    return bool(_INSTANCE_URL.match(uri))


def parse(uri: str, today: datetime.date | None = None) -> Query:
    """The ``Query`` of a ``dicomweb(s)://`` input; ValueError naming what is wrong with it."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme.lower() not in SCHEMES or not parts.hostname:
        raise ValueError(f"{_shown(uri)}: a DICOMweb input is dicomweb://HOST[:PORT]/PATH?QUERY (or dicomwebs://)")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{_shown(uri)}: credentials do not belong in the input (it is logged); set {ENV_USER} "
                         f"and {ENV_PASSWORD}, or {ENV_TOKEN} (or their _FILE forms) instead")
    netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
    root = f"{SCHEMES[parts.scheme.lower()]}://{netloc}{parts.path.rstrip('/')}"
    today = today or datetime.date.today()
    params, extra = [], {}
    for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        if key.lower() in ("limit", "offset"):
            raise ValueError(f"{_shown(uri)}: {key} is dualcam's to set (it pages through every match)")
        if key == "includefield":
            extra.update(_included(value, uri))
            continue
        params.append((key, _dates(value, today) if key.endswith("Date") else value))
    named = {key for key, _ in params}
    modalities = None if named & {"Modality", "00080060"} else DEFAULT_MODALITIES
    return Query(root, tuple(params), modalities, extra)


def _included(keywords: str, uri: str) -> dict[str, str]:
    """Column -> tag for the DICOM keywords of one ``includefield`` value (comma-separated)."""
    columns = {}
    for keyword in filter(None, keywords.split(",")):
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise ValueError(f"{_shown(uri)}: includefield {keyword!r} is not a DICOM keyword (e.g. PatientID)")
        columns[re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", keyword).lower()] = f"{tag:08X}"
    return columns


def _dates(value: str, today: datetime.date) -> str:
    """``today``, ``yesterday`` and ``today-N`` in a date or date range, as YYYYMMDD."""
    def date(word: re.Match[str]) -> str:
        days = int(word.group(1) or 0) + (word.group(0) == "yesterday")
        return (today - datetime.timedelta(days=days)).strftime("%Y%m%d")
    return _DATE_WORD.sub(date, value)


def _shown(uri: str) -> str:
    """``uri`` without any password, for messages."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None and parts.username is None:
        return uri
    return urllib.parse.urlunsplit(parts._replace(netloc=f"***@{parts.hostname}" + (
        f":{parts.port}" if parts.port else "")))


def search(uri: str) -> tuple[pa.Table, pa.Table]:
    """(one row per matching instance, sorted by ``uri``; the ``uri`` and ``modality`` of each instance
    skipped for its modality) for a ``dicomweb(s)://`` input, paging through every match.

    Raises before any work: ValueError for a malformed input, ``AuthRefused`` for credentials the
    server refuses, ``TransientError``/``StorageError`` when it cannot be searched.
    """
    query = parse(uri)
    columns = {**_COLUMNS, **query.extra_columns}
    rows: dict[str, list[Any]] = {name: [] for name in ("uri", *columns)}
    skipped: dict[str, list[str | None]] = {"uri": [], "modality": []}
    seen: set[str] = set()  # an instance on two pages (the server's order shifted between them) is one input
    for found in _matches(query, columns.values()):
        url = f"{query.root}/studies/{_value(found, _COLUMNS['study_uid'])}/series/" \
              f"{_value(found, _COLUMNS['series_uid'])}/instances/{_value(found, _COLUMNS['sop_uid'])}"
        if url in seen:
            continue
        seen.add(url)
        if query.modalities is not None and _value(found, _COLUMNS["modality"]) not in query.modalities:
            skipped["uri"].append(url)
            skipped["modality"].append(_value(found, _COLUMNS["modality"]))
            continue
        rows["uri"].append(url)
        for name, tag in columns.items():
            rows[name].append(_value(found, tag))
    table = pa.table({name: pa.array(values, pa.string()) for name, values in rows.items()})
    return table.sort_by("uri"), pa.table(skipped, pa.schema([("uri", pa.string()), ("modality", pa.string())]))


def _matches(query: Query, tags: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Every instance the query matches, a page at a time until a page comes back empty (servers cap a
    page below what was asked for, some silently: a short page is not the last)."""
    fields = sorted(set(tags))
    first_of_last_page = None
    for offset in range(0, 1 << 62, PAGE_SIZE):
        params = [*query.params, *(("includefield", tag) for tag in fields),
                  ("limit", str(PAGE_SIZE)), ("offset", str(offset))]
        url = f"{query.root}/instances?{urllib.parse.urlencode(params)}"
        body, _ = _get(url, "application/dicom+json", SEARCH_TIMEOUT)
        page = json.loads(body) if body.strip() else []
        if not page:
            return
        if page[0] == first_of_last_page:
            raise StorageError(f"{query.root}: the DICOMweb server ignores 'offset' (the same page twice); "
                               "narrow the query until it fits one page")
        first_of_last_page = page[0]
        yield from page


def _value(dataset: dict[str, Any], tag: str) -> str | None:
    """One attribute of a DICOM JSON dataset as text (a person name by its alphabetic form); None if absent."""
    values = dataset.get(tag, {}).get("Value") or [None]
    value = values[0]
    if isinstance(value, dict):
        value = value.get("Alphabetic")
    return None if value is None else str(value)


def retrieve(url: str, timeout: float = READ_TIMEOUT, max_bytes: int | None = None) -> bytes:
    """The DICOM file (Part 10 bytes) of one instance, as stored (``transfer-syntax=*``: never transcoded);
    ``TooLarge`` for an answer over ``max_bytes``, stopped as soon as it is."""
    body, content_type = _get(url, _ACCEPT_INSTANCE, timeout, max_bytes)
    return first_part(body, content_type, url)


def first_part(body: bytes, content_type: str, url: str) -> bytes:
    """The first part of a ``multipart/related`` response (a single-part ``application/dicom`` one as it is)."""
    if not content_type.lower().startswith("multipart/"):
        return body
    boundary = re.search(r'boundary="?([^";]+)"?', content_type)
    if not boundary:
        raise StorageError(f"{url}: the server's multipart answer names no boundary")
    delimiter = b"--" + boundary.group(1).encode()
    start = body.find(delimiter)
    head_end = body.find(b"\r\n\r\n", start)
    end = body.find(b"\r\n" + delimiter, head_end)
    if start < 0 or head_end < 0 or end < 0:
        raise StorageError(f"{url}: the server's multipart answer is cut short or malformed")
    return body[head_end + 4:end]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are refused: following one would send the credentials to wherever it points."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _get(url: str, accept: str, timeout: float, max_bytes: int | None = None) -> tuple[bytes, str]:
    """(body, Content-Type) of a GET; the errors of the module's docstring, never quoting a credential."""
    request = urllib.request.Request(url, headers={"Accept": accept, **credentials()})
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            check_size(url, int(length) if length and length.isdigit() else None, max_bytes)
            body = response.read() if max_bytes is None else response.read(max_bytes + 1)
            check_size(url, len(body), max_bytes)
            return body, response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as err:
        raise _http_error(url, err.code, str(err.reason)) from None
    except (TimeoutError, urllib.error.URLError, http.client.HTTPException, ConnectionError) as err:
        reason = getattr(err, "reason", None) or err
        raise TransientError(f"{url}: the DICOMweb server did not answer ({type(err).__name__}: {reason})") from None


def _http_error(url: str, code: int, reason: str) -> OSError:
    if code == 404:
        return FileNotFoundError(f"{url}: not found on the DICOMweb server (HTTP 404)")
    if code in (401, 403):
        return AuthRefused(f"{url}: the DICOMweb server refused the credentials (HTTP {code} {reason}); "
                           f"check {ENV_USER}/{ENV_PASSWORD} or {ENV_TOKEN}")
    if code == 429 or code >= 500:
        return TransientError(f"{url}: the DICOMweb server answered HTTP {code} {reason}; a later run retries it")
    return StorageError(f"{url}: the DICOMweb server answered HTTP {code} {reason}")


def credentials() -> dict[str, str]:
    """The ``Authorization`` header the environment asks for, or none."""
    token = _secret(ENV_TOKEN)
    if token:
        return {"Authorization": f"Bearer {token}"}
    user = _secret(ENV_USER)
    if user:
        pair = f"{user}:{_secret(ENV_PASSWORD) or ''}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode()}
    return {}


def _secret(name: str) -> str | None:
    """Environment variable ``name``, else the content of the file that ``name``_FILE names (stripped)."""
    value = os.environ.get(name)
    if value:
        return value
    path = os.environ.get(f"{name}_FILE")
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as file:
            return file.read().strip() or None
    except OSError as err:
        raise StorageError(f"{name}_FILE: {path} cannot be read ({err.strerror})") from None
