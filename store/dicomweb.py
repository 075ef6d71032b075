"""Ingest from a PACS over DICOMweb: QIDO-RS finds the instances, WADO-RS fetches them into the project, and the
folder ingest (store.ingest.ingest_folder) takes them from there, so every ingest rule holds for them too.

Files land in `<project>/pacs/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm`, each written to a
hidden temporary file and renamed into place, so a file that is there is whole. An instance is fetched once: not
when its SOP Instance UID is already in the project (from any ingest) or its file is already in the pacs folder.
So an interrupted run keeps what it finished and a re-run fetches only the rest.

Only radiographs (Modality CR or DX) are fetched by default: the project labels 2-D chest radiographs, and a PACS
study may hold CT or MR series of hundreds of slices. Instances whose Modality the server does not report are
fetched and left to the ingest to judge.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from store.db import ProjectDB
from store.errors import CxrAlError
from store.ingest import IngestReport, ingest_folder

if TYPE_CHECKING:
    from dicomweb_client.api import DICOMwebClient

DEFAULT_MODALITIES = ("CR", "DX")
PASSWORD_ENV = "CXR_AL_DICOMWEB_PASSWORD"
PACS_FOLDER = "pacs"
RETRY_ATTEMPTS = 3
QIDO_PAGE = 500  # results asked for per QIDO request; servers cap result lists, so we page
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")

# DICOM JSON tags (PS3.18 F.2) read from QIDO-RS results
_STUDY_UID, _SERIES_UID, _SOP_UID, _MODALITY = "0020000D", "0020000E", "00080018", "00080060"


@dataclass(frozen=True)
class PacsInstance:
    """One instance found by QIDO-RS: its three UIDs and modality (None when the server did not say)."""

    study_uid: str
    series_uid: str
    sop_uid: str
    modality: str | None

    def relative_path(self) -> Path:
        return Path(self.study_uid) / self.series_uid / f"{self.sop_uid}.dcm"


@dataclass
class PacsReport:
    """What a DICOMweb ingest did: the search, the fetch, then the folder ingest of the fetched files."""

    url: str
    studies: int = 0
    found: int = 0  # instances the search returned, of any modality
    other_modality: int = 0
    already_here: int = 0  # in the project or fetched before: not fetched again
    fetched: int = 0
    refused: list[tuple[str, str]] = field(default_factory=list)  # (what, why) for instances not fetched
    studies_not_found: list[str] = field(default_factory=list)
    ingest: IngestReport | None = None

    def as_dict(self) -> dict:
        return {"url": self.url, "studies": self.studies, "found": self.found, "other_modality": self.other_modality,
                "already_here": self.already_here, "fetched": self.fetched,
                "refused": [{"instance": w, "reason": r} for w, r in self.refused],
                "studies_not_found": self.studies_not_found,
                "ingest": self.ingest.as_dict() if self.ingest else None}


def pacs_folder(project_root: Path | str) -> Path:
    """Where fetched instances live inside a project."""
    return Path(project_root) / PACS_FOLDER


def is_uid(text: str) -> bool:
    """A DICOM UID (digits and dots, at most 64 characters): safe as a file name, whatever the server sent."""
    return len(text) <= 64 and _UID.fullmatch(text) is not None


def parse_since(text: str | None) -> date | None:
    """--since YYYY-MM-DD as a date; a clear error for anything else."""
    if text is None:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise CxrAlError(f"--since {text!r}: give a date as YYYY-MM-DD, e.g. 2024-03-01") from exc


def connect(url: str, user: str | None = None, password: str | None = None) -> DICOMwebClient:
    """A DICOMweb client for the service root `url` (e.g. http://pacs:8042/dicom-web), with basic auth if a user
    is given. Nothing is sent yet."""
    from dicomweb_client.api import DICOMwebClient
    from dicomweb_client.session_utils import create_session_from_user_pass

    if not re.match(r"https?://[^/\s]+", url or ""):
        raise CxrAlError(f"--dicomweb {url!r}: give the DICOMweb service root as http(s)://HOST[:PORT]/PATH, "
                         "e.g. http://pacs.example.org:8042/dicom-web")
    if user is not None and password is None:
        raise CxrAlError(f"--dicomweb-user {user}: give the password in ${PASSWORD_ENV} or with "
                         "--dicomweb-password-stdin")
    session = create_session_from_user_pass(user, password) if user is not None else None
    try:
        client = DICOMwebClient(url.rstrip("/"), session=session, timeout=(10, 120))
    except ValueError as exc:
        raise CxrAlError(f"--dicomweb {url!r}: {exc}; give the service root, e.g. "
                         "http://pacs.example.org:8042/dicom-web") from exc
    # the client retries any failed request (a refused connection too) with exponential back-off; its default
    # of 5 attempts makes an unreachable server a silent 30 s wait, these 3 attempts over ~3 s still ride out a blip
    client.set_http_retry_params(max_attempts=RETRY_ATTEMPTS, wait_exponential_multiplier=500)
    return client


def _server_error(exc: Exception, url: str, doing: str) -> CxrAlError:
    """A network or HTTP failure as the project's error: which server, what failed, what to do."""
    import requests

    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        code = exc.response.status_code
        if code in (401, 403):
            hint = (f"the server refused access (HTTP {code}): give --dicomweb-user and the password "
                    f"(${PASSWORD_ENV} or --dicomweb-password-stdin), or check that this user may read the studies")
        elif code == 404:
            hint = ("no DICOMweb service there (HTTP 404): check the URL's path, e.g. /dicom-web for Orthanc, "
                    "/dcm4chee-arc/aets/DCM4CHEE/rs for dcm4chee")
        else:
            hint = f"the server answered HTTP {code} {exc.response.reason}; try again later or ask its administrator"
    elif isinstance(exc, requests.Timeout):
        hint = "the server did not answer in time; check that it runs and is reachable, then try again"
    elif isinstance(exc, requests.ConnectionError):
        hint = "cannot reach the server; check the URL (host and port) and that the server runs"
    elif isinstance(exc, ValueError):  # a body that is not DICOM JSON, e.g. a web page
        hint = f"the answer is not DICOMweb ({exc}); check that the URL is the DICOMweb service root"
    else:
        hint = f"{type(exc).__name__}: {exc}"
    return CxrAlError(f"DICOMweb server {url}: {doing} failed: {hint}")


def _value(item: dict[str, Any], tag: str) -> str | None:
    values = (item.get(tag) or {}).get("Value") or []
    return str(values[0]) if values else None


def _search(client: DICOMwebClient, level: str, **kwargs: Any) -> list[dict[str, Any]]:
    """Every result of a QIDO-RS search, page by page (a server may cap one answer); stops when a page is short
    or brings nothing new (a server that ignores offset)."""
    search = {"studies": client.search_for_studies, "instances": client.search_for_instances}[level]
    results: list[dict[str, Any]] = []
    seen: set[str] = set()
    offset = 0
    while True:
        page = search(limit=QIDO_PAGE, offset=offset, **kwargs)
        new = [r for r in page if repr(r) not in seen]
        seen.update(repr(r) for r in new)
        results.extend(new)
        if len(page) < QIDO_PAGE or not new:
            return results
        offset += len(page)


def find_instances(client: DICOMwebClient, url: str, *, studies: Sequence[str] = (), since: date | None = None,
                   modalities: Sequence[str] | None = DEFAULT_MODALITIES, report: PacsReport) -> list[PacsInstance]:
    """QIDO-RS: the studies asked for (all, or the given UIDs; on or after `since` by StudyDate), then their
    instances of the given modalities (None: any). Counts and refusals go into report."""
    import requests

    filters: dict[str, Any] = {}
    if since is not None:
        filters["StudyDate"] = f"{since:%Y%m%d}-"
    for uid in studies:
        if not is_uid(uid):
            raise CxrAlError(f"--study {uid!r} is not a Study Instance UID (digits and dots, e.g. 1.2.840.113619.2.55)")
    try:
        if studies:
            study_uids: list[str] = []
            for uid in dict.fromkeys(studies):
                hits = _search(client, "studies", search_filters={**filters, "StudyInstanceUID": uid})
                if any(_value(h, _STUDY_UID) == uid for h in hits):
                    study_uids.append(uid)
                elif since is None:
                    report.studies_not_found.append(uid)
        else:
            study_uids = list(dict.fromkeys(u for h in _search(client, "studies", search_filters=filters)
                                            if (u := _value(h, _STUDY_UID))))
        wanted = {m.upper() for m in modalities} if modalities else None
        found: list[PacsInstance] = []
        for study_uid in study_uids:
            if not is_uid(study_uid):
                report.refused.append((f"study {study_uid!r}", "not a valid Study Instance UID; not fetched"))
                continue
            report.studies += 1
            for item in _search(client, "instances", study_instance_uid=study_uid,
                                fields=["SeriesInstanceUID", "SOPInstanceUID", "Modality"]):
                series_uid, sop_uid, modality = (_value(item, t) for t in (_SERIES_UID, _SOP_UID, _MODALITY))
                report.found += 1
                if wanted is not None and modality is not None and modality.upper() not in wanted:
                    report.other_modality += 1
                    continue
                if not (series_uid and sop_uid and is_uid(series_uid) and is_uid(sop_uid)):
                    report.refused.append((f"study {study_uid} series {series_uid!r} instance {sop_uid!r}",
                                           "the server gave no valid Series/SOP Instance UID; not fetched"))
                    continue
                found.append(PacsInstance(study_uid, series_uid, sop_uid, modality))
    except CxrAlError:
        raise
    except (requests.RequestException, ValueError) as exc:
        raise _server_error(exc, url, "searching (QIDO-RS)") from exc
    return list({i.sop_uid: i for i in found}.values())


def _write_instance(dataset: Any, target: Path) -> None:
    """Save a fetched dataset as target, whole or not at all: a hidden temporary file (the folder ingest leaves
    hidden files alone) renamed into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            dataset.save_as(fh, enforce_file_format=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fetch_instances(client: DICOMwebClient, url: str, instances: Iterable[PacsInstance], dest: Path, *,
                    report: PacsReport, progress: Callable[[int], None] | None = None) -> None:
    """WADO-RS: each instance into dest, in its original transfer syntax. An instance the server no longer has
    (404/410) or sends unreadable is refused and the rest go on; a failure of the server or the network stops the
    fetch with a clear error, keeping the files already written."""
    import requests

    for inst in instances:
        try:
            dataset = client.retrieve_instance(inst.study_uid, inst.series_uid, inst.sop_uid)
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else None
            if code not in (404, 410):
                raise _fetch_stopped(exc, url, dest, report) from exc
            report.refused.append((inst.sop_uid, f"the server no longer has it (HTTP {code})"))
        except requests.RequestException as exc:
            raise _fetch_stopped(exc, url, dest, report) from exc
        except Exception as exc:  # a part that is not DICOM, more than one instance ...
            report.refused.append((inst.sop_uid, f"the server sent no readable DICOM: {exc} [{type(exc).__name__}]"))
        else:
            sent = str(getattr(dataset, "SOPInstanceUID", ""))
            if sent != inst.sop_uid:
                report.refused.append((inst.sop_uid, f"the server sent instance {sent or 'without a UID'} instead"))
            else:
                try:
                    _write_instance(dataset, dest / inst.relative_path())
                except OSError as exc:  # a full disk, a folder gone: stop, keep what is fetched
                    raise _fetch_stopped(exc, url, dest, report) from exc
                except (ValueError, AttributeError) as exc:  # no or broken file meta: this one cannot be saved
                    report.refused.append((inst.sop_uid, f"cannot be saved as a DICOM file: {exc} "
                                                         f"[{type(exc).__name__}]"))
                else:
                    report.fetched += 1
        if progress:
            progress(1)


def _fetch_stopped(exc: Exception, url: str, dest: Path, report: PacsReport) -> CxrAlError:
    error = _server_error(exc, url, "fetching (WADO-RS)")
    return CxrAlError(f"{error}. The {report.fetched} instances fetched in this run are kept in {dest}; "
                      "run the same command again to fetch the rest.")


def ingest_dicomweb(db: ProjectDB, project_root: Path | str, url: str, classes: list[str], *,
                    studies: Sequence[str] = (), since: date | str | None = None,
                    modalities: Sequence[str] | None = DEFAULT_MODALITIES, user: str | None = None,
                    password: str | None = None, client: DICOMwebClient | None = None,
                    fetch_progress: Callable[[int], None] | None = None,
                    on_fetch_total: Callable[[int], None] | None = None,
                    progress: Callable[[int], None] | None = None,
                    on_total: Callable[[int], None] | None = None, max_pixels: int | None = None) -> PacsReport:
    """Fetch the new instances of a DICOMweb server into the project's pacs folder and ingest them (no labels,
    no test split: a PACS has no ground truth). Search or network errors raise CxrAlError before the project
    changes; an interrupted fetch keeps its finished files for the next run."""
    since = parse_since(since) if isinstance(since, str) else since
    client = client or connect(url, user, password)
    report = PacsReport(url=url)
    instances = find_instances(client, url, studies=studies, since=since, modalities=modalities, report=report)
    dest = pacs_folder(project_root)
    known = db.known_sop_uids()
    todo = [i for i in instances if i.sop_uid not in known and not (dest / i.relative_path()).is_file()]
    report.already_here = len(instances) - len(todo)
    if on_fetch_total:
        on_fetch_total(len(todo))
    fetch_instances(client, url, todo, dest, report=report, progress=fetch_progress)
    if dest.is_dir():
        report.ingest = ingest_folder(db, dest, classes, test_fraction=0.0, progress=progress, on_total=on_total,
                                      max_pixels=max_pixels)
    return report
