"""Typed configs: pydantic models with YAML files and dotted CLI overrides.

Every config class derives from :class:`StrictModel`, so an unknown key is an error that names the
key and the file. ``load_config(Cls, path, ["train.lr=1e-4", ...])`` reads YAML, applies the
overrides (values parsed as YAML scalars/lists), validates, and returns the typed object. Commands
load a section of a study file with :func:`irr_ray.study_config.load_section`, built on these.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from irr_ray.errors import ConfigError

T = TypeVar("T", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for every config: unknown keys rejected, assignments validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def _format_validation_error(err: ValidationError, source: str, overrides: dict[str, str] | None = None) -> str:
    """One line naming each bad key (three at most) and where it came from: the file, or the
    ``--set`` override that set it."""
    parts, from_set = [], []
    for e in err.errors()[:3]:
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        item = next((v for k, v in (overrides or {}).items() if loc == k or loc.startswith(k + ".")), None)
        if item is not None:
            from_set.append(item)
            msg += f" (from --set {item})"
        parts.append(f"`{loc}`: {msg}")
    more = f" (+{len(err.errors()) - 3} more)" if len(err.errors()) > 3 else ""
    where = "--set override" if len(from_set) == min(3, len(err.errors())) and from_set else source
    return f"invalid config {where}: " + "; ".join(parts) + more


def apply_overrides(data: dict[str, Any], overrides: list[str] | None, source: str = "") -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (value parsed as YAML) to a nested dict, in place."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"bad override {item!r}{source}: expected key=value (e.g. train.lr=1e-4)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"bad override {item!r}: value is not valid YAML ({exc})") from None
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"bad override {item!r}: `{p}` is not a section")
            node = nxt
        node[parts[-1]] = value
    return data


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base`` (nested dicts merged, everything else replaced); new dict."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"config {p} is a directory, expected a YAML file (e.g. {p}/config.yaml)")
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"config {p} is not a text (UTF-8) YAML file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config {p}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML in {p}{_yaml_where(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"invalid config {p}: top level must be a mapping")
    return data


def _yaml_where(exc: yaml.YAMLError) -> str:
    """``:LINE:COL: problem`` of a YAML error (1-based, as editors count)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or "parse error"
    where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
    return f"{where}: {problem}"


def override_keys(overrides: list[str] | None) -> dict[str, str]:
    """``{dotted key: the override as given}`` of ``key=value`` overrides (for error messages)."""
    return {o.split("=", 1)[0].strip(): o for o in overrides or [] if "=" in o}


def build_config(cls: type[T], data: dict[str, Any], source: str = "<dict>",
                 overrides: dict[str, str] | None = None) -> T:
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source, overrides)) from None


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """YAML file (optional) + dotted overrides -> validated ``cls`` instance."""
    data = read_yaml(path) if path is not None else {}
    apply_overrides(data, overrides)
    return build_config(cls, data, str(path) if path is not None else "<overrides>", override_keys(overrides))


def config_dict(cfg: BaseModel) -> dict[str, Any]:
    """JSON-safe dict of a config (what is saved beside every artifact and logged to MLflow)."""
    return json.loads(cfg.model_dump_json())


def stable_hash(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (configs, manifests); 16 hex chars."""
    if isinstance(obj, BaseModel):
        obj = config_dict(obj)
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1} (for MLflow params)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
