"""PACS ingest over DICOMweb against a real Orthanc (Debian packages orthanc, orthanc-dicomweb): the search, the
fetch, filters, idempotence on SOP Instance UID, resuming an interrupted fetch, auth and server errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests

from store.dicomweb import ingest_dicomweb, pacs_folder
from store.errors import CxrAlError
from tests.conftest import write_dicom
from tests.store.orthanc_server import ORTHANC, dicomweb_plugin, free_port, running_orthanc, upload

USER, PASSWORD = "reader", "not-a-real-password"
# (study date, [(modality, instances) per series]) per patient: 7 radiographs and 2 CT slices
STUDIES = [("20230110", [("DX", 2)]), ("20240305", [("CR", 2), ("CT", 2)]), ("20240601", [("DX", 3)])]

pytestmark = pytest.mark.skipif(not ORTHANC.exists(), reason="Orthanc is not installed: apt-get install orthanc "
                                                             "orthanc-dicomweb (.ci/run does)")


@dataclass
class Pacs:
    url: str  # the DICOMweb root
    base: str  # Orthanc's REST root
    studies: list[str]  # Study Instance UIDs, in STUDIES order
    sops: dict[str, set[str]]  # modality -> SOP Instance UIDs
    files: dict[str, Path]  # SOP Instance UID -> the file loaded


def _generated_dicoms(folder: Path) -> tuple[list[str], dict[str, set[str]], dict[str, Path]]:
    """One file per instance of STUDIES, each with its own pixels (so none is a duplicate of another)."""
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    rng = np.random.default_rng(12)
    studies, sops, files = [], {}, {}
    for p, (study_date, series_list) in enumerate(STUDIES):
        study_uid = generate_uid()
        studies.append(study_uid)
        for modality, n in series_list:
            series_uid = generate_uid()
            for k in range(n):
                path = folder / f"{p}-{modality}-{k}.dcm"
                pixels = (np.add.outer(np.arange(48), np.arange(48)) * 40 + rng.integers(0, 200, (48, 48)))
                write_dicom(path, pixels.astype(np.uint16), patient_name=f"Patient^{p}")
                ds = dcmread(path)
                ds.PatientID = f"PID-{p}"
                ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
                ds.StudyDate, ds.Modality, ds.SeriesNumber, ds.InstanceNumber = study_date, modality, 1, k + 1
                ds.save_as(path)
                sops.setdefault(modality, set()).add(str(ds.SOPInstanceUID))
                files[str(ds.SOPInstanceUID)] = path
    return studies, sops, files


@pytest.fixture(scope="module")
def pacs(tmp_path_factory) -> Iterator[Pacs]:
    """Orthanc with DICOMweb on a free 127.0.0.1 port, a throw-away configuration and storage, basic auth, and
    the generated DICOMs loaded; stopped afterwards."""
    if dicomweb_plugin() is None:
        pytest.fail("Orthanc is installed without its DICOMweb plugin: apt-get install orthanc-dicomweb")
    with running_orthanc(tmp_path_factory.mktemp("orthanc"), USER, PASSWORD) as base:
        studies, sops, files = _generated_dicoms(tmp_path_factory.mktemp("dicoms"))
        upload(base, files.values(), USER, PASSWORD)
        yield Pacs(f"{base}/dicom-web", base, studies, sops, files)


def _ingest(project, pacs: Pacs, **kwargs):
    return ingest_dicomweb(project.db, project.root, pacs.url, project.classes, user=USER, password=PASSWORD,
                           **kwargs)


def test_ingest_fetches_the_radiographs_keeping_their_uids_and_a_rerun_fetches_nothing(project, pacs) -> None:
    radiographs = pacs.sops["DX"] | pacs.sops["CR"]
    report = _ingest(project, pacs)
    assert (report.studies, report.found, report.other_modality) == (3, 9, 2)  # CT is not fetched by default
    assert report.fetched == 7 and report.ingest.added == 7 and not report.refused
    images = project.db.images()
    assert set(images["sop_uid"]) == radiographs
    assert set(images["study_uid"]) == set(pacs.studies)
    for row in images.itertuples():
        assert Path(row.path) == (pacs_folder(project.root) / row.study_uid / row.series_uid
                                  / f"{row.sop_uid}.dcm").resolve()
    assert not list(pacs_folder(project.root).rglob(".*"))  # no temporary file left behind

    again = _ingest(project, pacs)  # idempotent: nothing fetched, nothing added
    assert (again.fetched, again.already_here, again.ingest.added) == (0, 7, 0)
    assert len(project.db.images()) == 7


def test_an_instance_already_in_the_project_is_not_fetched_again(project, pacs, tmp_path) -> None:
    folder = tmp_path / "local"
    folder.mkdir()
    sop = sorted(pacs.sops["CR"])[0]
    (folder / "from_a_cd.dcm").write_bytes(pacs.files[sop].read_bytes())
    from store.ingest import ingest_folder

    ingest_folder(project.db, folder, project.classes)
    assert project.db.known_sop_uids() == {sop}
    report = _ingest(project, pacs, studies=[pacs.studies[1]])
    assert (report.fetched, report.already_here, report.ingest.added) == (1, 1, 1)
    assert set(project.db.images()["sop_uid"]) == pacs.sops["CR"]


def test_an_interrupted_fetch_keeps_what_it_finished_and_a_rerun_fetches_the_rest(project, pacs,
                                                                                   monkeypatch) -> None:
    from dicomweb_client.api import DICOMwebClient

    real = DICOMwebClient.retrieve_instance
    calls = []

    def failing_after_three(self, *args, **kwargs):
        calls.append(args)
        if len(calls) > 3:
            raise requests.ConnectionError("connection reset by peer")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(DICOMwebClient, "retrieve_instance", failing_after_three)
    with pytest.raises(CxrAlError, match="3 instances fetched in this run are kept.*run the same command again"):
        _ingest(project, pacs)
    assert len(list(pacs_folder(project.root).rglob("*.dcm"))) == 3
    assert len(project.db.images()) == 0  # nothing half-done in the database
    monkeypatch.setattr(DICOMwebClient, "retrieve_instance", real)

    resumed = _ingest(project, pacs)
    assert (resumed.fetched, resumed.already_here, resumed.ingest.added) == (4, 3, 7)


def test_study_since_and_modality_filters(project, pacs) -> None:
    only = _ingest(project, pacs, studies=[pacs.studies[0]])
    assert (only.studies, only.fetched) == (1, 2)
    assert set(project.db.images()["sop_uid"]) == {s for s, f in pacs.files.items() if f.name.startswith("0-")}
    since = _ingest(project, pacs, since="2024-03-01")  # the 2023 study is left out
    assert (since.studies, since.fetched, since.already_here) == (2, 5, 0)
    both = _ingest(project, pacs, studies=[pacs.studies[0]], since="2024-01-01")  # the study is older
    assert both.studies == 0 and both.fetched == 0 and not both.studies_not_found
    missing = _ingest(project, pacs, studies=["1.2.3.4.5"])
    assert missing.studies_not_found == ["1.2.3.4.5"]
    every = _ingest(project, pacs, modalities=None)  # any modality: the CT slices too
    assert every.fetched == 2 and every.other_modality == 0
    assert len(project.db.images()) == 9
    with pytest.raises(CxrAlError, match="YYYY-MM-DD"):
        _ingest(project, pacs, since="01/03/2024")
    with pytest.raises(CxrAlError, match="not a Study Instance UID"):
        _ingest(project, pacs, studies=["../../etc"])


def test_bad_urls_unreachable_servers_and_refused_access_leave_the_project_untouched(project, pacs) -> None:
    cases = [(f"http://127.0.0.1:{free_port()}/dicom-web", USER, "cannot reach the server"),
             ("ftp://pacs.example.org/dicom-web", USER, "give the DICOMweb service root"),
             ("not a url", USER, "give the DICOMweb service root"),
             (f"{pacs.base}/no-dicom-web-here", USER, "HTTP 404"),
             (pacs.url, None, "refused access \\(HTTP 401\\).*--dicomweb-user")]
    for url, user, words in cases:
        with pytest.raises(CxrAlError, match=words) as err:
            ingest_dicomweb(project.db, project.root, url, project.classes, user=user,
                            password=PASSWORD if user else None)
        assert "Traceback" not in str(err.value)
    with pytest.raises(CxrAlError, match="CXR_AL_DICOMWEB_PASSWORD"):
        ingest_dicomweb(project.db, project.root, pacs.url, project.classes, user=USER)
    assert len(project.db.images()) == 0 and not pacs_folder(project.root).exists()


def test_cli_ingest_from_dicomweb(project, pacs) -> None:
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo), "CXR_AL_DICOMWEB_PASSWORD": PASSWORD}

    def cxr(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "active.delivery.cli", "ingest", str(project.root), *args],
                              env=env, capture_output=True, text=True, timeout=120, input=stdin)

    done = cxr("--dicomweb", pacs.url, "--dicomweb-user", USER, "--since", "2024-03-01")
    assert done.returncode == 0, done.stderr
    assert "fetched 5 instances" in done.stdout and "added 5 images" in done.stdout
    del env["CXR_AL_DICOMWEB_PASSWORD"]
    as_json = cxr("--dicomweb", pacs.url, "--dicomweb-user", USER, "--dicomweb-password-stdin", "--study",
                  pacs.studies[0], "--json", stdin=PASSWORD + "\n")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["fetched"] == 2
    for args, words in [((), "give IMAGES_DIR or --dicomweb"), (("some/folder", "--dicomweb", pacs.url), "not both"),
                        (("some/folder", "--study", pacs.studies[0]), "only with --dicomweb")]:
        bad = cxr(*args)
        assert bad.returncode != 0 and words in bad.stderr and "Traceback" not in bad.stderr
