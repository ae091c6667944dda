"""Study configuration: load, merge presets, and validate against the JSON schema.

A bad config must stop the study before any job starts, with a message that names the key
and what is allowed — so validation errors are rewritten from jsonschema's wording.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:  # imported where configs are validated: the stages' CLI reads only the schema
    import jsonschema


class ConfigError(ValueError):
    """A study configuration that cannot run; the message names the offending key."""


def schema_path() -> Path:
    return Path(str(resources.files("resurgence") / "schemas" / "config.schema.yaml"))


def load_schema() -> dict[str, Any]:
    return yaml.safe_load(schema_path().read_text())


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge, the same rule Snakemake applies to ``--configfile`` overlays."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def settings_from_dict(cls: type, d: Mapping[str, Any] | None, what: str) -> Any:
    """``cls(**d)`` for a settings dataclass whose fields all have defaults; unknown keys are a
    ValueError naming them and the allowed ones (``what``: the section's name in the message)."""
    import dataclasses

    d = dict(d or {})
    allowed = sorted(f.name for f in dataclasses.fields(cls))
    unknown = sorted(set(d) - set(allowed))
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; allowed: {allowed}")
    return cls(**d)


def _key(path: Iterable[Any]) -> str:
    parts = [str(p) for p in path]
    return ".".join(parts) if parts else "<top level>"


def _describe(error: jsonschema.ValidationError) -> str:
    key = _key(error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    v = error.validator
    if v == "enum":
        return f"config key '{key}': {error.instance!r} is not allowed; allowed values: {schema['enum']}"
    if v == "const":
        return f"config key '{key}': must be {schema['const']!r}, got {error.instance!r}"
    if v == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed)) if isinstance(error.instance, dict) else []
        hint = f"; allowed keys: {allowed}" if allowed else ""
        return f"config key '{key}': unknown key(s) {extra}{hint}"
    if v == "required":
        return f"config key '{key}': {error.message}"
    if v == "type":
        return f"config key '{key}': {error.instance!r} has the wrong type; expected {schema['type']}"
    if v in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        return f"config key '{key}': {error.message}"
    if v == "propertyNames":
        return f"config key '{key}': bad name: {error.message}"
    return f"config key '{key}': {error.message}"


def validate_config(config: Mapping[str, Any], schema: dict[str, Any] | None = None) -> None:
    """Raise `ConfigError` listing every schema violation, each naming its key and the allowed values."""
    import jsonschema

    schema = schema if schema is not None else load_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    if errors:
        lines = []
        for e in errors:
            # Descend into the most specific sub-error (e.g. inside allOf/if-then).
            leaf = min(e.context, key=lambda c: len(c.absolute_path) * -1) if e.context else e
            lines.append(_describe(leaf))
        raise ConfigError("invalid study configuration:\n  " + "\n  ".join(dict.fromkeys(lines)))


PRUNABLE = ("world_variants", "tasks", "erase_variants", "finetune_sets", "finetune_methods", "experiments")


def drop_disabled(config: dict[str, Any]) -> dict[str, Any]:
    """Remove entries set to null in the named sections, in place: how an overlay preset drops them.

    Overlays are merged key by key (as Snakemake merges ``--configfile``), so a preset cannot
    delete an inherited task or figure; writing ``fig7: null`` in it does.
    """
    for section in PRUNABLE:
        entries = config.get(section)
        if isinstance(entries, dict):
            for key in [k for k, v in entries.items() if v is None]:
                del entries[key]
    return config


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with its ``$ref`` followed; an ``anyOf``/``allOf`` of objects as one object whose
    properties are its branches' (the first branch naming a key wins), so coercion sees every key."""
    while isinstance(schema, dict) and "$ref" in schema:
        schema = root["$defs"][schema["$ref"].rsplit("/", 1)[-1]]
    branches = schema.get("anyOf", []) + schema.get("allOf", []) if isinstance(schema, dict) else []
    if branches and "properties" not in schema:
        props: dict[str, Any] = {}
        for branch in branches:
            for key, sub in _resolve(branch, root).get("properties", {}).items():
                props.setdefault(key, sub)
        schema = {**schema, "properties": props}
    return schema


def _coerce_scalar(value: str, types: list[str]) -> Any:
    if "boolean" in types and value.lower() in ("true", "false"):
        return value.lower() == "true"
    for kind, cast in (("integer", int), ("number", float)):
        if kind in types:
            try:
                return cast(value)
            except ValueError:
                pass
    if "null" in types and value.lower() in ("null", "none", "~"):
        return None
    return value


def coerce_strings(
    config: Any, schema: dict[str, Any] | None = None, root: dict[str, Any] | None = None
) -> Any:
    """Turn strings into the booleans/numbers the schema expects, in place.

    Snakemake hands nested ``--config key={a: 1}`` values over as strings; without this a user's
    ``--config "toyworld={retrain: true}"`` would be rejected as a string.
    """
    root = root if root is not None else load_schema()
    schema = _resolve(schema if schema is not None else root, root)
    if isinstance(config, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, value in config.items():
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            if sub is None:
                continue
            sub = _resolve(sub, root)
            types = sub.get("type", [])
            types = [types] if isinstance(types, str) else list(types)
            if isinstance(value, str) and types and "string" not in types:
                config[key] = _coerce_scalar(value, types)
            else:
                coerce_strings(value, sub, root)
    elif isinstance(config, list) and isinstance(schema.get("items"), dict):
        items = _resolve(schema["items"], root)
        types = items.get("type", [])
        types = [types] if isinstance(types, str) else list(types)
        for i, value in enumerate(config):
            if isinstance(value, str) and types and "string" not in types:
                config[i] = _coerce_scalar(value, types)
            else:
                coerce_strings(value, items, root)
    return config


def apply_defaults(
    config: Any, schema: dict[str, Any] | None = None, root: dict[str, Any] | None = None
) -> Any:
    """Fill every key the schema gives a ``default:`` and the config leaves unset, in place: the schema is
    where those defaults are written (settings backed by a dataclass take the dataclass's instead)."""
    root = root if root is not None else load_schema()
    schema = _resolve(schema if schema is not None else root, root)
    if isinstance(config, dict):
        props = schema.get("properties", {})
        for key, sub in props.items():
            if key not in config and "default" in _resolve(sub, root):
                config[key] = copy.deepcopy(_resolve(sub, root)["default"])
        extra = schema.get("additionalProperties")
        for key, value in config.items():
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            if sub is not None:
                apply_defaults(value, sub, root)
    return config


def prepare_config(config: dict[str, Any]) -> dict[str, Any]:
    """A merged config made ready to run, in place: nulls dropped, strings coerced, defaults filled,
    validated once (the Snakefile and `load_config` both call this)."""
    schema = load_schema()
    drop_disabled(config)
    coerce_strings(config, root=schema)
    apply_defaults(config, root=schema)
    validate_config(config, schema)
    return config


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """One config file as a mapping; a missing, unreadable or malformed file is a `ConfigError` naming it."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"config file {str(p)!r} does not exist (working directory {os.getcwd()})"
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {str(p)!r} cannot be read: {err}") from None
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        what = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"config file {str(p)!r} is not valid YAML{at}: {what}") from None
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping, got {type(data).__name__}")
    return data


def load_config(
    paths: Iterable[str | os.PathLike] = ("config.yaml",), overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Read and merge config files left to right (later wins), apply overrides, validate."""
    config: dict[str, Any] = {}
    for p in paths:
        config = deep_merge(config, read_config_file(p))
    if overrides:
        config = deep_merge(config, overrides)
    return prepare_config(config)
