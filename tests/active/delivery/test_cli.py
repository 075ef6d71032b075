"""The cxr-al command line end to end on phantoms, run as a user would (a subprocess per command)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[3]


def cxr(*args: str, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "active.delivery.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_every_command_has_help(tmp_path) -> None:
    for cmd in ("demo", "demo-data", "init", "ingest", "status", "label", "undo", "export", "pretrain", "embed",
                "train", "suggest", "explain", "simulate", "serve", "user add", "user list", "leakage"):
        out = cxr(*cmd.split(), "--help", cwd=tmp_path).stdout
        assert "usage: cxr-al " + cmd in out


def test_a_reader_that_went_away_ends_the_command_quietly(tmp_path) -> None:
    """`cxr-al status P | head`: a closed pipe on stdout is no traceback; the work is done, the exit code is 141."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the command writes anything
    try:
        proc = subprocess.run([sys.executable, "-m", "active.delivery.cli", "init", str(tmp_path / "p"), "--classes",
                               "a,b"], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert proc.returncode == 141, proc.stderr
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr
    assert (tmp_path / "p" / "project.yaml").is_file()


def test_end_to_end_on_phantoms(tmp_path) -> None:
    cxr("demo-data", "demo", "--n", "24", "--size", "64", "--seed", "4", cwd=tmp_path)
    assert len(list((tmp_path / "demo" / "images").rglob("*.png"))) == 24
    cxr("init", "proj", "--classes", "Normal,Consolidation,GroundGlass,Interstitial", cwd=tmp_path)
    again = cxr("init", "proj", "--classes", "Normal,Consolidation", cwd=tmp_path, ok=False)
    assert again.returncode != 0 and "refusing to overwrite" in again.stderr and "Traceback" not in again.stderr

    out = cxr("ingest", "proj", "demo/images", "--labels-from", "folders", "--as", "oracle", "--test-fraction",
              "0.25", "--json", cwd=tmp_path).stdout
    report = json.loads(out)
    assert report["added"] == 24 and report["test"] == 8

    status = json.loads(cxr("status", "proj", "--json", cwd=tmp_path).stdout)
    assert {"images", "skipped", "labels", "labels_per_class", "rounds"} <= set(status)
    assert status["images"] == {"total": 24, "pool": 16, "test": 8} and status["labels"] == 0

    cxr("label", "proj", "1", "normal", "--annotator", "alice", cwd=tmp_path)
    cxr("label", "proj", "2", "Consolidation", "--annotator", "alice", "--seconds", "4.2", cwd=tmp_path)
    bad = cxr("label", "proj", "3", "Pneumothorax", "--annotator", "alice", cwd=tmp_path, ok=False)
    assert bad.returncode == 2 and "unknown class" in bad.stderr and "Traceback" not in bad.stderr
    missing = cxr("label", "proj", "999", "Normal", "--annotator", "alice", cwd=tmp_path, ok=False)
    assert missing.returncode == 2 and "no image with id 999" in missing.stderr

    status = json.loads(cxr("status", "proj", "--json", cwd=tmp_path).stdout)
    assert status["labels"] == 2 and status["labels_per_class"] == {"Consolidation": 1, "Normal": 1}
    assert status["annotators"] == ["alice"]
    assert "labeled images: 2" in cxr("status", "proj", cwd=tmp_path).stdout

    cxr("undo", "proj", "--annotator", "alice", cwd=tmp_path)
    cxr("export", "proj", "labels.csv", "--format", "csv", cwd=tmp_path)
    frame = pd.read_csv(tmp_path / "labels.csv")
    assert list(frame["image_id"]) == [1] and frame["label"].iloc[0] == "Normal"
    cxr("export", "proj", "folder", "--format", "imagefolder", cwd=tmp_path)
    assert len(list((tmp_path / "folder").glob("*/Normal/*.png"))) == 1  # train/ (pool) or test/


def test_patients_leakage_and_test_split_labels(tmp_path) -> None:
    """ingest --groups-from, the grouping in status, leakage, and label --test-split (refused without it)."""
    from store.project import open_project

    cxr("demo-data", "demo", "--n", "16", "--size", "32", "--seed", "2", cwd=tmp_path)
    files = sorted(p.relative_to(tmp_path / "demo" / "images").as_posix()
                   for p in (tmp_path / "demo" / "images").rglob("*.png"))
    (tmp_path / "groups.csv").write_text("file,subject\n" + "".join(f"{f},P{i % 4}\n" for i, f in enumerate(files)))
    cxr("init", "proj", "--classes", "Normal,Consolidation,GroundGlass,Interstitial", cwd=tmp_path)
    report = json.loads(cxr("ingest", "proj", "demo/images", "--labels-from", "folders", "--test-fraction", "0.25",
                            "--groups-from", "groups.csv", "--json", cwd=tmp_path).stdout)
    assert report["added"] == 16 and report["patients"] == 4 and report["test"] % 4 == 0
    text = cxr("status", "proj", cwd=tmp_path).stdout
    assert "patients: 4" in text and "leakage: 0" in text
    leak = cxr("leakage", "proj", cwd=tmp_path)
    assert "in both splits: 0" in leak.stdout and "not checked" in leak.stdout
    assert json.loads(cxr("leakage", "proj", "--json", cwd=tmp_path).stdout)["found"] is False

    test_id = str(int(open_project(tmp_path / "proj").db.images("test")["id"].iloc[0]))
    refused = cxr("label", "proj", test_id, "Normal", "--annotator", "alice", cwd=tmp_path, ok=False)
    assert refused.returncode == 2 and "--test-split" in refused.stderr and "Traceback" not in refused.stderr
    given = cxr("label", "proj", test_id, "Normal", "--annotator", "alice", "--test-split", "--no-auto-train",
                cwd=tmp_path)
    assert "test-split" in given.stdout
    assert "test-split labels: 1" in cxr("status", "proj", cwd=tmp_path).stdout


def test_user_errors_are_one_line(tmp_path) -> None:
    for args in (["status", "nowhere"], ["ingest", "nowhere", "x"], ["init", "p", "--classes", "OnlyOne"]):
        proc = cxr(*args, cwd=tmp_path, ok=False)
        assert proc.returncode == 2, args
        assert proc.stderr.startswith("cxr-al: error:") and "Traceback" not in proc.stderr


def test_label_fires_the_round_policy_in_the_background(tmp_path) -> None:
    """With train_every 2, the second label starts a training round in a detached process."""
    import time

    import yaml

    cxr("demo-data", "d", "--n", "16", "--size", "48", cwd=tmp_path)
    cxr("init", "p", "--classes", "Normal,Consolidation,GroundGlass,Interstitial", "--image-size", "48",
        cwd=tmp_path)
    config_path = tmp_path / "p" / "project.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["round_policy"]["train_every"] = 2
    config_path.write_text(yaml.safe_dump(config))
    cxr("ingest", "p", "d/images", "--labels-from", "folders", "--test-fraction", "0.25", cwd=tmp_path)
    from store.db import ProjectDB

    pool = ProjectDB(tmp_path / "p" / "project.duckdb").images("pool")
    folder = pool["path"].map(lambda p: Path(p).parent.name)
    normal, other = int(pool.loc[folder == "Normal", "id"].iloc[0]), int(pool.loc[folder != "Normal", "id"].iloc[0])
    first = cxr("label", "p", str(normal), "Normal", "--annotator", "alice", cwd=tmp_path).stdout
    assert "round policy fired" not in first
    status = json.loads(cxr("status", "p", "--json", cwd=tmp_path).stdout)
    assert status["round_due"] is False
    second = cxr("label", "p", str(other), folder[pool["id"] == other].iloc[0], "--annotator", "alice",
                 cwd=tmp_path).stdout
    assert "round policy fired" in second
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        rounds = [r for r in json.loads(cxr("status", "p", "--json", cwd=tmp_path).stdout)["rounds"]
                  if r["kind"] == "train"]
        if rounds and rounds[-1]["status"] != "running":
            break
        time.sleep(2)
    assert rounds and rounds[-1]["status"] == "done", (tmp_path / "p" / "artifacts" / "rounds" /
                                                       "background.log").read_text()[-2000:]
    assert rounds[-1]["n_labels"] == 2 and "macro_auc" in rounds[-1]["metrics"]


def _choices(parser, command: str, dest: str) -> list[str]:
    """The choices the parser offers for one option of one (sub)command, e.g. ('user add', 'role')."""
    import argparse

    for word in command.split():
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[word]
    action = next(a for a in parser._actions if a.dest == dest)
    return list(action.choices)


def test_parser_choices_are_the_registries() -> None:
    from active.delivery.cli import build_parser
    from active.engine.jobs import TRAIN_MODES
    from active.strategies import STRATEGIES
    from active.views.accounts import ROLES
    from models.augment import AUGMENT_PRESETS
    from models.backbones import BACKBONES
    from models.metrics import CI_METRICS
    from models.ssl import MODULES
    from store.export import FORMATS

    parser = build_parser()
    expected = {("init", "backbone"): BACKBONES, ("pretrain", "backbone"): BACKBONES,
                ("pretrain", "method"): MODULES, ("pretrain", "augment"): AUGMENT_PRESETS,
                ("export", "format"): FORMATS, ("suggest", "strategy"): STRATEGIES, ("train", "mode"): TRAIN_MODES,
                ("simulate", "mode"): TRAIN_MODES, ("simulate", "metric"): CI_METRICS, ("user add", "role"): ROLES}
    for (command, dest), registry in expected.items():
        assert _choices(parser, command, dest) == list(registry), (command, dest)
    assert parser.parse_args(["init", "p", "--classes", "a,b", "--backbone", "resnet50"]).backbone == "resnet50"
    args = parser.parse_args(["simulate", "src", "--out", "o", "--mode", "finetune", "--epochs", "2", "--device",
                              "cpu", "--batch-size", "8"])
    assert (args.mode, args.epochs, args.device, args.batch_size) == ("finetune", 2, "cpu", 8)
    help_text = parser._subparsers._group_actions[0].choices["pretrain"].format_help()
    assert all(name in help_text for name in MODULES)
    from active.engine.simulate import DEFAULT_STRATEGIES

    simulate_help = "".join(parser._subparsers._group_actions[0].choices["simulate"].format_help().split())
    assert f"(default:{','.join(DEFAULT_STRATEGIES)})" in simulate_help  # without the help's line breaks


def test_building_the_parser_imports_no_torch() -> None:
    code = ("import sys; from active.delivery.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'sklearn', 'models.backbones') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr


# what Lightning and torch print when nobody quiets them: banners, adverts, model summaries, warnings
NOISE = ("GPU available", "TPU available", "HPU available", "LOCAL_RANK", "Tip:", "\U0001f4a1", "litlogger",
         "Total params", "Trainable params", "| Name", "Warning", "warn(")
BAR = re.compile(r"\|\s*\d+/(\d+|\?) \[")  # tqdm's "| 3/10 [" or "| 0/? ["


def _bar_lines(text: str) -> list[str]:
    """Lines a progress bar drew: tqdm redraws one bar on one line (carriage returns); another bar, or a nested
    one, adds lines."""
    return [line for line in text.split("\n") if BAR.search(line)]


def cxr_raw(*args: str, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    """cxr() with stdout and stderr decoded as written: text mode would turn a progress bar's carriage returns
    into line breaks."""
    proc = subprocess.run([sys.executable, "-m", "active.delivery.cli", *args], cwd=cwd, capture_output=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    out = subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())
    if ok:
        assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def quiet_run(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """A phantom project (16 images of 48 px, labels imported) taken through pretrain (1 step) and a finetune
    round (1 epoch), then status and explain of two images: each command's stdout and stderr, apart."""
    base = tmp_path_factory.mktemp("quiet")
    cxr("demo-data", "d", "--n", "16", "--size", "48", "--seed", "2", cwd=base)
    cxr("init", "p", "--classes", "Normal,Consolidation,GroundGlass,Interstitial", "--image-size", "48", cwd=base)
    cxr("ingest", "p", "d/images", "--labels-from", "folders", "--as", "labels", "--test-fraction", "0.25", cwd=base)
    runs = {"pretrain": cxr_raw("pretrain", "p", "--epochs", "1", "--max-steps", "1", "--batch-size", "8", cwd=base),
            "train": cxr_raw("train", "p", "--mode", "finetune", "--epochs", "1", cwd=base),
            "status": cxr_raw("status", "p", cwd=base),
            "explain": cxr_raw("explain", "p", "1", "2", "1", "--out", "cams", cwd=base),
            "explain_to_file": cxr_raw("explain", "p", "1", "2", "--out", "cam.png", cwd=base, ok=False)}
    runs["base"] = base
    return runs


@pytest.mark.slow
def test_pretrain_and_train_print_results_on_stdout_and_nothing_else(quiet_run) -> None:
    pretrain, train = quiet_run["pretrain"], quiet_run["train"]
    assert re.fullmatch(r"pretrained simclr round 1: 1 epoch, final loss \S+, .* on cpu; checkpoint \S+\n",
                        pretrain.stdout), pretrain.stdout
    lines = train.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("round 2 (finetune, 12 labels): macro_auc ") and \
        lines[1].startswith("queued "), train.stdout
    for proc in (pretrain, train):
        assert "\r" not in proc.stdout and not _bar_lines(proc.stdout)
        for stream in (proc.stdout, proc.stderr):
            assert not [word for word in NOISE if word in stream], stream[-2000:]
    assert len(_bar_lines(pretrain.stderr)) <= 1 and "\x1b[A" not in pretrain.stderr, pretrain.stderr[-2000:]


@pytest.mark.slow
def test_a_finetune_round_draws_one_progress_bar(quiet_run) -> None:
    stderr = quiet_run["train"].stderr
    assert len(_bar_lines(stderr)) <= 1 and "\x1b[A" not in stderr, stderr[-2000:]


@pytest.mark.slow
def test_status_prints_readable_text(quiet_run) -> None:
    out = quiet_run["status"].stdout
    assert "round 1 pretrain done: 1 epoch, final loss " in out
    assert re.search(r"^round 2 train done \(finetune, 12 labels\): macro_auc \d\.\d{3}, ", out, re.M), out
    assert "is active learning paying off: " in out
    for python_repr in ("{", "}", "np.", "float64", "Timestamp(", "None", "nan", "[(", "'"):
        assert python_repr not in out, (python_repr, out)


@pytest.mark.slow
def test_explain_writes_one_overlay_per_image_into_a_folder(quiet_run) -> None:
    base, run = quiet_run["base"], quiet_run["explain"]
    lines = run.stdout.splitlines()
    assert [line.split(",")[0] for line in lines] == ["Grad-CAM++ for image 1", "Grad-CAM++ for image 2"]
    for image_id in (1, 2):
        assert (base / "cams" / f"image-{image_id}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    refused = quiet_run["explain_to_file"]
    assert refused.returncode == 2 and "give a folder" in refused.stderr and not (base / "cam.png").exists()


def test_ingest_prints_what_it_skipped_and_repaired(tmp_path) -> None:
    """A user sees, without --json, which files were skipped and which were repaired on decoding."""
    import numpy as np
    from PIL import Image

    data = tmp_path / "data"
    data.mkdir()
    pixels = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    pixels[3, 4] = np.inf
    Image.fromarray(pixels, "F").save(data / "one_inf.tiff")
    (data / "broken.png").write_bytes(b"not a png")
    cxr("init", "p", "--classes", "Normal,COVID-19", cwd=tmp_path)
    out = cxr("ingest", "p", str(data), cwd=tmp_path).stdout
    assert "added 1 images" in out
    assert "skipped" in out and "broken.png" in out
    assert "warning" in out and "one_inf.tiff" in out and "not finite" in out
