"""Reading a configuration: a params file, ``-S key=value`` overrides, validation, and where each
value came from.

The same path is taken by the CLI (``--params params.yaml -S train.lr=1e-5``), by ``dvc.yaml``
(which tracks ``params.yaml``) and by the KFP components (which receive the overrides as
pipeline parameters). Validation happens before any work starts: an unknown key, a wrong type or
an out-of-range value raises :class:`ConfigError` naming the key. A key no file or override sets
takes the schema's default (:mod:`t2iops.config.schema`: a real SDXL run).
"""
from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ..errors import UsageError
from .schema import Config, leaf_keys

SCHEMA_DEFAULT = "schema default"


class ConfigError(UsageError, ValueError):
    """A configuration problem, with the offending key in the message."""


def _format_error(err: ValidationError, origin: str, given: tuple[str, ...] = ()) -> str:
    """One line naming each bad key; ``given``: the dotted keys of the ``-S`` overrides, so that an
    unknown section (``trainn`` of ``-S trainn.lr=1``) is answered with the whole key (train.lr)."""
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        kind = e["type"]
        msg = e["msg"]
        if kind == "extra_forbidden":
            parent = e["loc"][:-1]
            allowed = _allowed_keys(parent)
            guess = did_you_mean(next((g for g in given if g.startswith(key + ".")), key))
            hint = f"did you mean {guess}? " if guess else ""
            msg = f"unknown key; {hint}allowed keys here: {', '.join(allowed)}"
        elif kind == "literal_error" and "expected" in e.get("ctx", {}):
            msg = f"invalid value {e.get('input')!r}; allowed values: {e['ctx']['expected']}"
        elif "input" in e and kind != "missing":
            msg = f"{msg} (got {e['input']!r})"
        lines.append(f"{key}: {msg}")
    return f"invalid configuration ({origin}): " + "; ".join(lines)


# diffusers' training-script argument names, for users who bring a diffusers command line along
_DIFFUSERS_NAMES = {"learning_rate": "lr", "lr_scheduler": "lr_schedule", "max_train_steps": "max_steps",
                    "train_batch_size": "batch_size", "gradient_accumulation_steps": "grad_accum",
                    "lr_warmup_steps": "warmup_steps", "checkpointing_steps": "checkpoint_every"}


def did_you_mean(key: str) -> str | None:
    """The configuration key closest to an unknown dotted ``key``: ``train.lrr`` -> ``train.lr``,
    ``lr`` -> ``train.lr`` (a leaf of that name in some section), ``train.learning_rate`` ->
    ``train.lr`` (diffusers' name), ``trainn`` -> ``train``."""
    leaves = leaf_keys()
    sections = sorted({".".join(k.split(".")[:i]) for k in leaves for i in range(1, k.count(".") + 1)})
    parent, _, last = key.rpartition(".")
    last = _DIFFUSERS_NAMES.get(last, last)
    if not parent:
        named = [k for k in leaves if k.rsplit(".", 1)[-1] == last]
        if named:
            return " or ".join(named[:3])
    if not parent or parent in sections:
        prefix = f"{parent}." if parent else ""
        children = sorted({k[len(prefix):].split(".")[0] for k in leaves if k.startswith(prefix)})
        close = difflib.get_close_matches(last, children, n=1, cutoff=0.6)
        return f"{prefix}{close[0]}" if close else None
    close = difflib.get_close_matches(key, leaves + sections, n=1, cutoff=0.6)
    return close[0] if close else None


def _allowed_keys(loc: tuple) -> list[str]:
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            return sorted(model.model_fields)
        model = field.annotation
    return sorted(model.model_fields)


def parse_override(item: str) -> tuple[list[str], Any]:
    """``train.lr=1e-5`` -> (["train", "lr"], 1e-5). Values are parsed as YAML scalars/lists."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.path=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key}: value {raw!r} is not valid YAML ({exc})") from None
    return key.split("."), value


def _override_items(overrides: list[str] | dict[str, Any]) -> list[tuple[list[str], Any]]:
    items = overrides.items() if isinstance(overrides, dict) else [parse_override(o) for o in overrides]
    return [(path.split(".") if isinstance(path, str) else list(path), value) for path, value in items]


def apply_overrides(data: dict[str, Any], overrides: list[str] | dict[str, Any]) -> dict[str, Any]:
    for path, value in _override_items(overrides):
        cur = data
        for i, part in enumerate(path[:-1]):
            nxt = cur.get(part)
            if nxt is None:
                nxt = cur[part] = {}
            elif not isinstance(nxt, dict):
                raise ConfigError(f"override {'.'.join(path)}: {'.'.join(path[: i + 1])} is not a section")
            cur = nxt
        cur[path[-1]] = value
    return data


def read_params(params: str | Path) -> dict[str, Any]:
    """The mapping a params file holds (any subset of the configuration), not yet validated."""
    return read_yaml_mapping(params, "params file")


def read_yaml_mapping(file: str | Path, what: str) -> dict[str, Any]:
    """The mapping a YAML file of ours holds (a params file, the pipeline settings); every error
    names ``what`` and the file, and is a :class:`ConfigError` (exit 2: nothing was done)."""
    path = Path(file)
    if not path.exists():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {exc}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{what} {path} must hold a mapping at the top level")
    return loaded


def load_config(
    params: str | Path | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
) -> Config:
    """Load ``params.yaml`` (or nothing: the schema's defaults, a real SDXL run), apply
    ``key=value`` overrides, validate. Raises :class:`ConfigError` naming the key on any problem."""
    data: dict[str, Any] = {}
    origin = "defaults"
    if params is not None:
        data = read_params(params)
        origin = str(Path(params))
    if overrides:
        data = apply_overrides(data, overrides)
        origin += " + overrides"
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        given = tuple(".".join(path) for path, _ in _override_items(overrides or []))
        raise ConfigError(_format_error(err, origin, given)) from None


def config_from_dict(data: dict[str, Any], origin: str = "dict") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(err, origin)) from None


# ---------------------------------------------------------------------------------------
# Provenance: which file or override set each value. `t2iops config show --sources` prints it,
# so that "why is lr 1e-3?" has an answer without reading three files.
def _holds(data: Any, path: list[str]) -> bool:
    """Whether a nested mapping sets ``path`` (or a value above it, such as a whole list)."""
    for part in path:
        if not isinstance(data, dict):
            return True
        if part not in data:
            return False
        data = data[part]
    return True


def config_sources(
    params: str | Path | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
) -> dict[str, str]:
    """Dotted leaf key -> where its resolved value came from: the last ``-S key=value`` that set
    it (or a section above it), else the params file (named as given), else ``schema default``.
    Takes the same arguments as :func:`load_config`, which it calls to validate them."""
    cfg = load_config(params, overrides)
    data = read_params(params) if params is not None else {}
    if isinstance(overrides, dict):
        labels = [f"override {key}={value}" for key, value in overrides.items()]
    else:
        labels = [f"-S {item}" for item in overrides or []]
    setters = [(label, path) for label, (path, _) in zip(labels, _override_items(overrides or []))]
    sources: dict[str, str] = {}
    for key in leaf_keys(cfg.to_dict()):
        parts = key.split(".")
        hits = [label for label, path in setters if parts[: len(path)] == path or path[: len(parts)] == parts]
        if hits:
            sources[key] = hits[-1]
        elif params is not None and _holds(data, parts):
            sources[key] = str(Path(params))
        else:
            sources[key] = SCHEMA_DEFAULT
    return sources


_KEY_LINE = re.compile(r"^( *)([A-Za-z_0-9.\-]+):(.*)$")


def yaml_with_sources(cfg: Config, sources: dict[str, str]) -> str:
    """``cfg`` as YAML (the same keys and values as :meth:`Config.to_yaml`, still a valid params
    file) with each leaf's source as a trailing comment: ``lr: 1.0e-05  # -S train.lr=1e-5``."""
    lines = yaml.safe_dump(cfg.to_dict(), sort_keys=False, width=float("inf")).splitlines()
    out, stack = [], []
    for i, line in enumerate(lines):
        m = _KEY_LINE.match(line)
        if m:
            indent = len(m.group(1))
            stack = stack[: indent // 2] + [m.group(2)]
            source = sources.get(".".join(stack))
            following = next((nxt for nxt in lines[i + 1:] if nxt.strip()), "")
            # A value continued on deeper-indented lines (a multi-line string) keeps no comment.
            if source and len(following) - len(following.lstrip(" ")) <= indent:
                line = f"{line:<40} # {source}"
        out.append(line)
    return "\n".join(out) + "\n"
