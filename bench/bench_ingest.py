"""Benchmark: ingest throughput (files/s) and peak memory (RSS) on real radiographs, the hostile folder and a PACS.

    .venv/bin/python bench/bench_ingest.py                       # cxr4, hostile folder, PACS of 300 instances
    .venv/bin/python bench/bench_ingest.py --sets cxr4 --data ../shared/data
    .venv/bin/python bench/bench_ingest.py --sets pacs --pacs-instances 1000

Each run is a child process that creates a fresh project and ingests once (cold: hash, decode check, commit),
then once more (everything already known), and reports its peak RSS (VmHWM). A `baseline`
child imports the same modules and creates the project without ingesting, so RSS above it is what ingest adds.
Sets:
- cxr4: ../shared/data/cxr4 (2,973 JPEGs, 224 px), labels from folders, 20% test split.
- hostile: the folder tests/store/test_ingest.py builds (decompression bombs, a 13000^2 16-bit PNG, crafted
  DICOM headers, FIFOs, link loops, a folder 990 levels deep, non-UTF-8 names ...) around a few good images.
- pacs: cxr4 images as 8-bit CR DICOMs (10 per study) in a throw-away Orthanc with its DICOMweb plugin;
  `ingest --dicomweb`: QIDO-RS search, WADO-RS fetch of every instance, then the folder ingest. Skipped when
  Orthanc is not installed.
Prints a table; full numbers go to bench/results/ingest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CXR4_CLASSES = ["Normal", "Bacterial", "Viral", "COVID-19"]
PACS_USER, PACS_PASSWORD = "bench", "bench-password"


# ----------------------------------------------------------------------------- child: one measured ingest
def child(kind: str, source: str, project_dir: str, classes: list[str], url: str | None) -> dict:
    """Create a project and ingest source twice (kind: folder, folder-labels, dicomweb, baseline); timings."""
    start = time.perf_counter()
    from store.dicomweb import ingest_dicomweb
    from store.ingest import ingest_folder
    from store.project import init_project

    project = init_project(Path(project_dir), classes, image_size=64)
    ready = time.perf_counter()
    runs = []
    for _ in range(0 if kind == "baseline" else 2):
        t0 = time.perf_counter()
        if kind == "dicomweb":
            pacs = ingest_dicomweb(project.db, project.root, url, classes, user=PACS_USER, password=PACS_PASSWORD)
            report, extra = pacs.ingest, {"fetched": pacs.fetched, "already_here": pacs.already_here}
        else:
            labels = "folders" if kind == "folder-labels" else None
            report = ingest_folder(project.db, source, classes, labels_from=labels,
                                   test_fraction=0.2 if labels else 0.0)
            extra = {}
        runs.append({"seconds": time.perf_counter() - t0, "added": report.added, "skipped": len(report.skipped),
                     "duplicates": len(report.duplicates), "already_known": report.already_known, **extra})
    return {"import_and_init_s": ready - start, "runs": runs, "peak_rss_mib": peak_rss_mib()}


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM). Not ru_maxrss: Linux carries the parent's peak over a fork
    and exec into the child's ru_maxrss, and the parent here holds torch (imported by the test helpers)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(kind: str, source: Path | str, classes: list[str], url: str | None = None) -> dict:
    """One child process (a fresh interpreter, so its peak RSS is the ingest's own); its result and wall time."""
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        cmd = [sys.executable, __file__, "--child", kind, str(source), str(Path(tmp) / "project"),
               ",".join(classes), url or ""]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{kind} child failed ({proc.returncode}) on {source}")
    return {**json.loads(proc.stdout.decode().strip().splitlines()[-1]), "wall_s": wall}


# ----------------------------------------------------------------------------- the sets
def hostile_folder(root: Path) -> Path:
    """The hostile folder of tests/store/test_ingest.py, with its phantoms and bombs."""
    from store.phantoms import write_phantom_dataset
    from tests.store.hostile_files import write_blank_png
    from tests.store.test_ingest import _hostile_folder

    phantoms = write_phantom_dataset(root / "phantoms", n=40, seed=3, size=64)
    (root / "bombs").mkdir()
    bombs = {"bomb.png": write_blank_png(root / "bombs" / "bomb.png", 30000, 30000, 1),
             "big16.png": write_blank_png(root / "bombs" / "big16.png", 13000, 13000, 16)}
    return _hostile_folder(root / "hostile", phantoms, bombs)


def pacs_dicoms(cxr4: Path, out: Path, n: int) -> list[Path]:
    """The first n cxr4 images (sorted by path) as 8-bit CR DICOMs, 10 per study, one series per study."""
    import numpy as np
    from PIL import Image
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    from tests.conftest import write_dicom

    out.mkdir(parents=True)
    files = []
    for k, src in enumerate(sorted(cxr4.rglob("*.jpg"))[:n]):
        if k % 10 == 0:
            study, series = generate_uid(), generate_uid()
        path = out / f"{k:05d}.dcm"
        write_dicom(path, np.asarray(Image.open(src).convert("L")), patient_name=f"Bench^{k // 10}")
        ds = dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study, series, "CR"
        ds.StudyDate, ds.PatientID = "20240101", f"BENCH-{k // 10}"
        ds.save_as(path)
        files.append(path)
    return files


def row(name: str, result: dict, baseline_mib: float) -> dict:
    """One line of the table: files = what the first ingest judged (added, skipped or duplicate)."""
    cold, warm = result["runs"]
    files = cold["added"] + cold["skipped"] + cold["duplicates"]
    return {"set": name, "files": files, "added": cold["added"], "skipped": cold["skipped"],
            "duplicates": cold["duplicates"], "cold_s": cold["seconds"], "files_per_s": files / cold["seconds"],
            "rerun_s": warm["seconds"], "import_and_init_s": result["import_and_init_s"], "wall_s": result["wall_s"],
            "peak_rss_mib": result["peak_rss_mib"], "rss_over_baseline_mib": result["peak_rss_mib"] - baseline_mib,
            "runs": result["runs"]}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, source, project_dir, classes, url = sys.argv[2:7]
        print(json.dumps(child(kind, source, project_dir, classes.split(","), url or None)))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=["cxr4", "hostile", "pacs"], choices=["cxr4", "hostile", "pacs"])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="real data folder")
    parser.add_argument("--pacs-instances", type=int, default=300)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "ingest.json")
    args = parser.parse_args()
    cxr4 = args.data / "cxr4"
    if {"cxr4", "pacs"} & set(args.sets) and not cxr4.is_dir():
        parser.error(f"{cxr4} not found: give --data (see ../shared/data/README.md)")

    machine = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
               "load_before": os.getloadavg()}
    baseline = run_child("baseline", REPO, CXR4_CLASSES)
    rows = []
    if "cxr4" in args.sets:
        rows.append(row("cxr4", run_child("folder-labels", cxr4, CXR4_CLASSES), baseline["peak_rss_mib"]))
    if "hostile" in args.sets:
        from tests.store.hostile_files import remove_tree

        with tempfile.TemporaryDirectory(prefix="bench-hostile-") as tmp:
            folder = hostile_folder(Path(tmp))
            try:
                rows.append(row("hostile", run_child("folder", folder, CXR4_CLASSES), baseline["peak_rss_mib"]))
            finally:
                remove_tree(folder)
    if "pacs" in args.sets:
        from tests.store.orthanc_server import ORTHANC, running_orthanc, upload

        if not ORTHANC.exists():
            print("pacs: skipped, Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)")
        else:
            with tempfile.TemporaryDirectory(prefix="bench-pacs-") as tmp:
                files = pacs_dicoms(cxr4, Path(tmp) / "dicoms", args.pacs_instances)
                (Path(tmp) / "orthanc").mkdir()
                with running_orthanc(Path(tmp) / "orthanc", PACS_USER, PACS_PASSWORD) as base:
                    upload(base, files, PACS_USER, PACS_PASSWORD)
                    result = run_child("dicomweb", "-", CXR4_CLASSES, url=f"{base}/dicom-web")
                rows.append(row("pacs (DICOMweb)", result, baseline["peak_rss_mib"]))
    machine["load_after"] = os.getloadavg()

    print(f"baseline (imports + new project, no ingest): peak RSS {baseline['peak_rss_mib']:.0f} MiB, "
          f"{baseline['import_and_init_s']:.1f} s")
    print(f"{'set':<16} {'files':>6} {'added':>6} {'skipped':>7} {'ingest s':>9} {'files/s':>8} {'re-run s':>9} "
          f"{'peak RSS MiB':>12} {'over baseline':>13}")
    for r in rows:
        print(f"{r['set']:<16} {r['files']:>6} {r['added']:>6} {r['skipped']:>7} {r['cold_s']:>9.1f} "
              f"{r['files_per_s']:>8.1f} {r['rerun_s']:>9.2f} {r['peak_rss_mib']:>12.0f} "
              f"{r['rss_over_baseline_mib']:>13.0f}")
    print(f"load average before {machine['load_before'][0]:.1f}, after {machine['load_after'][0]:.1f} "
          f"on {machine['cpus']} CPUs")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "baseline": baseline, "sets": rows}, indent=2))
    print(f"full numbers: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
