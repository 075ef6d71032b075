"""project.yaml is checked against a schema on every open and before every write."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from store.config import validate_config
from store.db import ProjectDB
from store.errors import CxrAlError
from store.project import CONFIG_NAME, DB_NAME, DEFAULT_ROUND_POLICY, init_project, open_project

REPO = Path(__file__).resolve().parents[2]


def _rewrite(root: Path, **changes) -> None:
    path = root / CONFIG_NAME
    config = yaml.safe_load(path.read_text())
    config.update(changes)
    path.write_text(yaml.safe_dump(config, sort_keys=False))


BAD = [
    ({"round_policy": {"train_every": "twenty"}}, "round_policy.train_every", "whole number"),
    ({"round_policy": "abc"}, "round_policy", "mapping"),
    ({"round_polcy": {"train_every": 5}}, "round_polcy", "unknown key"),
    ({"image_size": "big"}, "image_size", "whole number"),
    ({"round_policy": {"mode": "tune"}}, "round_policy.mode", "'probe' or 'finetune'"),
    ({"backbone": "vgg"}, "backbone", "resnet18"),
    ({"embedding": "middle"}, "embedding", "multiscale"),
    ({"round_policy": {"train_every": 2.5}}, "round_policy.train_every", "whole number"),
    ({"round_policy": {"epochs": True}}, "round_policy.epochs", "whole number"),
    ({"round_policy": {"train_evry": 3}}, "round_policy.train_evry", "unknown key"),
    ({"image_size": 4096}, "image_size", "at most 1024"),
    ({"double_read_fraction": 1.5}, "double_read_fraction", "at most"),
    ({"positive_class": "Pneumothorax"}, "positive_class", "one of the classes"),
]


@pytest.mark.parametrize(("changes", "key", "problem"), BAD, ids=[k for _, k, _ in BAD])
def test_a_bad_project_yaml_is_refused_in_one_line(project, changes, key, problem) -> None:
    _rewrite(project.root, **changes)
    with pytest.raises(CxrAlError) as info:
        open_project(project.root)
    message = str(info.value)
    assert "\n" not in message
    assert "project.yaml: " in message and key in message and problem in message


def test_messages_name_the_key_path() -> None:
    with pytest.raises(CxrAlError, match=r"^project.yaml: round_policy.train_every: must be a whole number "
                                         r"\(got 'twenty'\)$"):
        validate_config({"classes": ["A", "B"], "round_policy": {"train_every": "twenty"}}, "project.yaml")
    with pytest.raises(CxrAlError, match=r"^project.yaml: unknown key 'round_polcy'$"):
        validate_config({"classes": ["A", "B"], "round_polcy": {}}, "project.yaml")
    with pytest.raises(CxrAlError, match="; ") as info:  # several problems: all of them, still one line
        validate_config({"classes": ["A", "B"], "image_size": "big", "backbone": "vgg"}, "project.yaml")
    assert "\n" not in str(info.value)


def test_a_valid_config_round_trips(project) -> None:
    config = project.config
    assert config["round_policy"] == DEFAULT_ROUND_POLICY and config["double_read_fraction"] == 0.0
    again = open_project(project.root)
    assert again.config == config
    assert validate_config(again.config, "x") == config

    again.config["round_policy"]["train_every"] = 0
    again.config["double_read_fraction"] = 0.25
    again.save_config()
    reopened = open_project(project.root)
    assert reopened.round_policy["train_every"] == 0 and reopened.config["double_read_fraction"] == 0.25


def test_defaults_fill_a_minimal_config(project) -> None:
    (project.root / CONFIG_NAME).write_text("classes: [COVID-19, Normal]\nround_policy: {mode: finetune}\n")
    opened = open_project(project.root)
    assert opened.config["positive_class"] == "COVID-19" and opened.config["image_size"] == 224
    assert opened.config["backbone"] == "resnet18"
    assert opened.round_policy == {**DEFAULT_ROUND_POLICY, "mode": "finetune"}


def test_a_bad_policy_is_never_written(project) -> None:
    before = (project.root / CONFIG_NAME).read_text()
    project.config["round_policy"]["train_every"] = "twenty"
    with pytest.raises(CxrAlError, match="round_policy.train_every"):
        project.save_config()
    assert (project.root / CONFIG_NAME).read_text() == before


def test_init_validates_before_writing(tmp_path) -> None:
    with pytest.raises(CxrAlError, match="backbone"):
        init_project(tmp_path / "p", ["A", "B"], backbone="vgg")
    assert not (tmp_path / "p" / CONFIG_NAME).exists() and not (tmp_path / "p" / DB_NAME).exists()


def test_cli_refuses_a_bad_config_without_labeling(ingested_project) -> None:
    root = ingested_project.root
    image_id = int(ingested_project.db.images("pool")["id"].iloc[0])
    _rewrite(root, round_policy={"train_every": "twenty"})
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "active.delivery.cli", "label", str(root), str(image_id),
                           "Normal", "--annotator", "ann"], cwd=root.parent, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "round_policy.train_every" in proc.stderr
    assert len(ProjectDB(root / DB_NAME).current_labels()) == 0


def test_the_embedding_kinds_are_the_models_own() -> None:
    """store/ does not import models/: the schema spells the kinds out, and must spell the same ones."""
    import typing

    from models.backbones import EMBEDDINGS
    from store.config import ProjectConfig

    assert typing.get_args(ProjectConfig.model_fields["embedding"].annotation) == EMBEDDINGS
