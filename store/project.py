"""A project on disk: PROJECT_DIR/project.duckdb plus the human-readable PROJECT_DIR/project.yaml."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from store.db import ProjectDB
from store.errors import CxrAlError

CONFIG_NAME = "project.yaml"
DB_NAME = "project.duckdb"
MAX_CLASSES = 20
PRIVATE_DIR = 0o700  # the project holds password hashes and patient paths: owner only, whatever the umask
PRIVATE_FILE = 0o600

DEFAULT_ROUND_POLICY = {
    "train_every": 20,  # start a training round after this many new labels (0 = only on demand)
    "mode": "probe",  # probe (logistic regression on SSL embeddings) | finetune (end to end)
    "strategy": "auto",  # query strategy for suggestions
    "batch_size": 16,  # suggestions per batch and annotator
    "epochs": 10,  # fine-tuning epochs (finetune mode)
    "random_share": 0.2,  # share of each `auto` batch drawn at random (measures whether active picks pay off)
}

# the embedding new projects get (models.backbones.GreyBackbone.embedding): pooled middle and last blocks joined.
# A project.yaml without the key keeps "last" (the pooled last block), what it was embedded with before.
DEFAULT_EMBEDDING = "multiscale"

_CLASS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.()+-]{0,63}$")


def validate_classes(classes: list[str]) -> list[str]:
    """Check class names are usable as labels, button captions and folder names; return them stripped."""
    names = [c.strip() for c in classes if c.strip()]
    if len(names) < 2:
        raise CxrAlError("a project needs at least two classes, e.g. --classes \"COVID-19,Normal\"")
    if len(names) > MAX_CLASSES:
        raise CxrAlError(f"at most {MAX_CLASSES} classes are supported, got {len(names)}")
    for name in names:
        if not _CLASS_RE.match(name) or ".." in name:
            raise CxrAlError(
                f"class name {name!r} is not allowed: use letters, digits, spaces and _ . ( ) + - "
                "(at most 64 characters, starting with a letter or digit)")
    lowered = [n.lower() for n in names]
    if len(set(lowered)) != len(lowered):
        raise CxrAlError(f"class names must be unique (ignoring case): {names}")
    return names


def default_positive_class(classes: list[str]) -> str:
    """The class of clinical interest for HM/sensitivity: COVID-19 when present, else the first non-Normal."""
    for c in classes:
        if c.lower().replace("_", "-") in ("covid-19", "covid19", "covid"):
            return c
    return next((c for c in classes if c.lower() != "normal"), classes[0])


@dataclass
class Project:
    """An open project: its folder, configuration and database handle."""

    root: Path
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def db(self) -> ProjectDB:
        return ProjectDB(self.root / DB_NAME)

    @property
    def classes(self) -> list[str]:
        return list(self.config["classes"])

    @property
    def round_policy(self) -> dict[str, Any]:
        return {**DEFAULT_ROUND_POLICY, **(self.config.get("round_policy") or {})}

    @property
    def artifacts(self) -> Path:
        """Where checkpoints, embeddings, the index and round outputs live."""
        return self.root / "artifacts"

    def class_index(self, label: str) -> int:
        """Position of a class; CxrAlError naming the valid classes when it is unknown."""
        canonical = self.canonical_class(label)
        return self.classes.index(canonical)

    def canonical_class(self, label: str) -> str:
        """The configured spelling of a class name given in any case; CxrAlError when unknown."""
        lookup = {c.lower(): c for c in self.classes}
        found = lookup.get(str(label).strip().lower())
        if found is None:
            raise CxrAlError(f"unknown class {label!r}; this project's classes are: {', '.join(self.classes)}")
        return found

    def save_config(self) -> None:
        """Validate, then write project.yaml atomically (a bad value or a crash never leaves a bad config)."""
        from store.config import validate_config

        path = self.root / CONFIG_NAME
        self.config = validate_config(self.config, str(path))
        write_config(path, self.config)


def write_config(path: Path, config: dict[str, Any]) -> None:
    header = ("# CXR-AL project configuration. Class order is the order of the label buttons (keys 1-9).\n"
              "# round_policy.train_every: labels between automatic training rounds (0 = on demand only).\n")
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(header + yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    tmp.chmod(PRIVATE_FILE)
    os.replace(tmp, path)


def init_project(root: Path | str, classes: list[str], *, image_size: int = 224, backbone: str = "resnet18",
                 positive_class: str | None = None, name: str | None = None,
                 embedding: str = DEFAULT_EMBEDDING) -> Project:
    """Create PROJECT_DIR with an empty database and its config; refuses to overwrite a project."""
    # imported here, not at the top: store.config imports this module
    from store.config import validate_config

    root = Path(root).absolute()
    classes = validate_classes(classes)
    if (root / DB_NAME).exists() or (root / CONFIG_NAME).exists():
        raise CxrAlError(f"{root} already holds a CXR-AL project; refusing to overwrite it")
    if root.exists() and not root.is_dir():
        raise CxrAlError(f"{root} exists and is not a directory")
    if positive_class is not None and positive_class not in classes:
        raise CxrAlError(f"positive class {positive_class!r} is not one of the classes {classes}")
    if not 16 <= int(image_size) <= 1024:
        raise CxrAlError("--image-size must be between 16 and 1024 pixels")
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(PRIVATE_DIR)
    config = {
        "name": name or root.resolve().name,
        "classes": classes,
        "positive_class": positive_class or default_positive_class(classes),
        "image_size": int(image_size),
        "backbone": backbone,
        "embedding": embedding,
        "round_policy": dict(DEFAULT_ROUND_POLICY),
        "double_read_fraction": 0.0,
        "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    config = validate_config(config, str(root / CONFIG_NAME))
    ProjectDB(root / DB_NAME).create()
    (root / DB_NAME).chmod(PRIVATE_FILE)
    write_config(root / CONFIG_NAME, config)
    return Project(root, config)


def open_project(root: Path | str) -> Project:
    """Open an existing project folder; CxrAlError when it is not one or its project.yaml is invalid."""
    # imported here, not at the top: store.config imports this module
    from store.config import validate_config

    root = Path(root).absolute()  # recorded artifact paths are relative to it, whatever the working folder
    cfg_path = root / CONFIG_NAME
    if not root.is_dir():
        raise CxrAlError(f"{root}: no such project folder (create one with `cxr-al init {root} --classes ...`)")
    if not cfg_path.is_file() or not (root / DB_NAME).is_file():
        raise CxrAlError(f"{root} is not a CXR-AL project (no {CONFIG_NAME} / {DB_NAME}); run `cxr-al init` first")
    try:
        config = yaml.safe_load(cfg_path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise CxrAlError(f"{cfg_path} is not valid YAML: {exc}") from exc
    if not isinstance(config, dict) or "classes" not in config:
        raise CxrAlError(f"{cfg_path} has no 'classes' list")
    config = validate_config(config, str(cfg_path))  # the schema (store/config.py), defaults filled in
    _migrate_once(root)
    return Project(root, config)


# Database files this process has seen at the current schema, by (path, device, inode): the app opens its project
# on every page run, and a schema check is a database connection each time. A new file at the same path (a
# project made again) has another inode and is checked again.
_CURRENT_SCHEMA: set[tuple[str, int, int]] = set()


def _migrate_once(root: Path) -> None:
    """Bring the project's database to the current schema, once per file per process."""
    path = root / DB_NAME
    info = path.stat()
    key = (str(path), info.st_dev, info.st_ino)
    if key not in _CURRENT_SCHEMA:
        ProjectDB(path).migrate(root)  # a read when the schema is current
        _CURRENT_SCHEMA.add(key)
