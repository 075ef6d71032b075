"""The schema of project.yaml: every open and every write goes through `validate_config`.

A bad value (``round_policy: {train_every: twenty}``) or a mistyped key (``round_polcy``) is refused with
one line naming the key, instead of being accepted and crashing a training round later. Strategy names are
only checked to be non-empty text here: the registry lives in ``active.strategies`` and store/ does not
import upwards, so callers that run a strategy check its name themselves.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from store.errors import CxrAlError
from store.project import DEFAULT_ROUND_POLICY, default_positive_class, validate_classes

Text = Annotated[str, StringConstraints(strict=True, strip_whitespace=True, min_length=1)]


def _int(default: int, ge: int, le: int) -> Any:
    return Field(default=default, strict=True, ge=ge, le=le)


class RoundPolicy(BaseModel):
    """When and how training rounds run (project.yaml `round_policy`)."""

    model_config = ConfigDict(extra="forbid")

    train_every: int = _int(DEFAULT_ROUND_POLICY["train_every"], 0, 100_000)
    mode: Literal["probe", "finetune"] = DEFAULT_ROUND_POLICY["mode"]
    strategy: Text = DEFAULT_ROUND_POLICY["strategy"]
    batch_size: int = _int(DEFAULT_ROUND_POLICY["batch_size"], 1, 1000)
    epochs: int = _int(DEFAULT_ROUND_POLICY["epochs"], 1, 1000)
    random_share: float = Field(default=DEFAULT_ROUND_POLICY["random_share"], strict=False, ge=0.0, le=1.0)


class OidcSignIn(BaseModel):
    """Sign-in through an OpenID Connect provider (project.yaml `access.oidc`): the provider's name (its
    `[auth.NAME]` section in the project's .streamlit/secrets.toml, which holds the client id and secret: never
    project.yaml), the label of its button, and the identity claim whose value is an account's name."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, strict=True)
    provider: str = Field(strict=True)
    label: Text | None = None
    claim: str = Field(default="email", strict=True)

    @field_validator("provider")
    @classmethod
    def _provider(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,31}", value):  # Streamlit refuses '_' in provider names
            raise ValueError(f"must be 1-32 lower-case letters, digits or '-' (got {value!r})")
        return value

    @field_validator("claim")
    @classmethod
    def _claim(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.:-]{0,63}", value):
            raise ValueError(f"must be a claim name such as 'email' or 'preferred_username' (got {value!r})")
        return value


class AccessPolicy(BaseModel):
    """Sign-in sessions and lockout (project.yaml `access`): seconds a session lives without a sign of life and at
    most; failed sign-ins (per name tried) that lock it; seconds a lock lasts (0: until `cxr-al user unlock`);
    optional sign-in through an OpenID Connect provider (`oidc`)."""

    model_config = ConfigDict(extra="forbid")

    session_idle_s: int = _int(30 * 60, 1, 7 * 24 * 3600)
    session_max_s: int = _int(12 * 3600, 60, 90 * 24 * 3600)
    lockout_failures: int = _int(10, 1, 1000)
    lockout_s: int = _int(15 * 60, 0, 365 * 24 * 3600)
    oidc: OidcSignIn | None = None


def access_policy(config: dict[str, Any]) -> dict[str, Any]:
    """The access settings of a project configuration, defaults filled in (`oidc`: None when not configured)."""
    return AccessPolicy.model_validate(config.get("access") or {}).model_dump()


def oidc_sign_in(config: dict[str, Any]) -> dict[str, Any] | None:
    """The OpenID Connect sign-in settings {enabled, provider, label, claim} of a project configuration when it is
    configured and enabled (label filled in from the provider's name), else None."""
    oidc = access_policy(config)["oidc"]
    if not oidc or not oidc["enabled"]:
        return None
    return {**oidc, "label": oidc["label"] or oidc["provider"]}


class ProjectConfig(BaseModel):
    """The whole of project.yaml; unknown keys are refused so a typo never goes unnoticed."""

    model_config = ConfigDict(extra="forbid")

    name: Text | None = None
    classes: list[Annotated[str, Field(strict=True)]]
    positive_class: Annotated[str, Field(strict=True)] | None = Field(default=None, validate_default=True)
    image_size: int = _int(224, 16, 1024)
    backbone: Literal["resnet18", "resnet50", "densenet121"] = "resnet18"
    # models.backbones.EMBEDDINGS; missing: "last", what projects made before the key were embedded with
    embedding: Literal["multiscale", "last"] = "last"
    round_policy: RoundPolicy = Field(default_factory=RoundPolicy)
    double_read_fraction: float = Field(default=0.0, strict=True, ge=0.0, le=1.0)
    access: AccessPolicy = Field(default_factory=AccessPolicy)
    created_at: str | None = None

    @field_validator("classes")
    @classmethod
    def _classes(cls, value: list[str]) -> list[str]:
        try:
            return validate_classes(value)
        except CxrAlError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("positive_class")
    @classmethod
    def _positive(cls, value: str | None, info: ValidationInfo) -> str | None:
        classes = info.data.get("classes")
        if not classes:  # classes failed validation: that error is reported instead
            return value
        if value is None:
            return default_positive_class(classes)
        lookup = {c.lower(): c for c in classes}
        found = lookup.get(value.strip().lower())
        if found is None:
            raise ValueError(f"must be one of the classes {', '.join(classes)} (got {value!r})")
        return found

    @field_validator("round_policy", "access", mode="before")
    @classmethod
    def _empty_policy(cls, value: Any) -> Any:
        return {} if value is None else value  # `round_policy:` with nothing under it means the defaults

    @field_validator("created_at", mode="before")
    @classmethod
    def _timestamp(cls, value: Any) -> Any:
        # an unquoted timestamp in hand-edited YAML loads as a datetime; keep it as the text it was
        if isinstance(value, datetime) and not value.utcoffset():
            return value.strftime("%Y-%m-%dT%H:%M:%SZ")
        if isinstance(value, date):  # also a datetime with a non-UTC offset
            return value.isoformat()
        return value


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(error: dict[str, Any]) -> str:
    """One pydantic error as `key.path: problem (got ...)`."""
    loc = [str(p) for p in error.get("loc", ())]
    kind = error.get("type", "")
    ctx = error.get("ctx") or {}
    got = f" (got {_show(error.get('input'))})"
    if kind == "extra_forbidden":
        return f"unknown key {'.'.join(loc)!r}"
    if kind == "missing":
        return f"missing required key {'.'.join(loc)!r}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        problem = "must be a whole number" + got
    elif kind in ("float_type", "float_parsing"):
        problem = "must be a number" + got
    elif kind in ("string_type", "str_type"):
        problem = "must be text" + got
    elif kind in ("bool_type", "bool_parsing"):
        problem = "must be true or false" + got
    elif kind == "string_too_short":
        problem = "must not be empty"
    elif kind in ("list_type", "tuple_type"):
        problem = "must be a list" + got
    elif kind in ("model_type", "model_attributes_type", "dict_type"):
        problem = "must be a mapping of settings" + got
    elif kind == "literal_error":
        problem = f"must be {ctx.get('expected', 'one of the allowed values')}" + got
    elif kind in ("greater_than_equal", "greater_than"):
        problem = f"must be at least {ctx.get('ge', ctx.get('gt'))}" + got
    elif kind in ("less_than_equal", "less_than"):
        problem = f"must be at most {ctx.get('le', ctx.get('lt'))}" + got
    elif kind == "value_error":
        problem = str(ctx.get("error") or error.get("msg", "invalid value"))
    else:
        problem = str(error.get("msg", "invalid value")) + got
    problem = " ".join(problem.split())  # always one line
    return f"{'.'.join(loc)}: {problem}" if loc else problem


def validate_config(raw: Any, source: str) -> dict[str, Any]:
    """Check a project configuration against the schema; the normalised plain dict, else CxrAlError.

    The message is one line: `SOURCE: key.path: problem`, several problems joined with '; '."""
    if not isinstance(raw, dict):
        raise CxrAlError(f"{source}: must be a mapping of settings with at least a 'classes' list "
                         f"(got {_show(raw)})")
    try:
        model = ProjectConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(_describe(e) for e in exc.errors(include_url=False))
        raise CxrAlError(f"{source}: {problems}") from None
    return model.model_dump(exclude_none=True)
