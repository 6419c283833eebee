"""``${VAR}`` / ``${VAR:-default}`` expansion, deep merging and ``--set key=value`` overrides of a family file: the
generic dictionary work under :mod:`asyrp.study.families`."""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from asyrp.errors import UserError

_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}")

class ExperimentError(UserError):
    """A family file or run folder that cannot be used; one line, exit code 2."""


def expand_variables(obj, env: Mapping[str, str] | None = None, strict: bool = True,
                     used: dict | None = None, missing: list | None = None):
    """``${VAR}`` / ``${VAR:-default}`` in every string of ``obj`` (recursively). ``:-`` also replaces an empty
    value, ``-`` only an unset one. A string that is exactly one ``${...}`` becomes an int / float / bool when it
    reads as one, and None when it expands to ''. Unset variables without a default raise (``strict``) or stay as
    written (and are listed in ``missing``)."""
    env = os.environ if env is None else env
    used = {} if used is None else used
    missing = [] if missing is None else missing
    if isinstance(obj, dict):
        return {k: expand_variables(v, env, strict, used, missing) for k, v in obj.items()}
    if isinstance(obj, list):
        return [expand_variables(v, env, strict, used, missing) for v in obj]
    if not isinstance(obj, str) or "${" not in obj:
        return obj

    def sub(m: re.Match) -> str:
        name, op, default = m.group(1), m.group(2), m.group(3)
        value = env.get(name)
        if value is None or (op == ":-" and value == ""):
            if op is None:
                if name not in missing:
                    missing.append(name)
                return m.group(0)
            value = default
        used[name] = value
        return value

    out = _VAR_RE.sub(sub, obj)
    if missing and strict:
        raise ExperimentError(f"the family needs environment variable(s) {', '.join(missing)} "
                              "(set them, or give defaults with ${VAR:-default})")
    if _VAR_RE.fullmatch(obj) and out != obj:
        if out == "":
            return None
        try:
            parsed = yaml.safe_load(out)
        except yaml.YAMLError:
            return out
        if isinstance(parsed, (bool, int, float)):
            return parsed
    return out


def deep_merge(base: Mapping, over: Mapping) -> dict:
    """Nested dicts merge key by key; anything else in ``over`` replaces."""
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_value(text: str):
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return number(value) if isinstance(value, str) else value


def number(value):
    """PyYAML reads 1e-5 as a string (YAML 1.1): turn numeric strings into numbers."""
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            try:
                return float(value)
            except ValueError:
                return value
    return value


def parse_overrides(overrides) -> list[tuple[list[str], Any]]:
    """``["train.lr=0.1", ...]`` or ``{"train.lr": 0.1}`` → [(["train", "lr"], 0.1), ...]."""
    if not overrides:
        return []
    items = overrides.items() if isinstance(overrides, Mapping) else []
    out = []
    if not isinstance(overrides, Mapping):
        for text in overrides:
            key, sep, value = str(text).partition("=")
            if not sep or not key.strip():
                raise ExperimentError(f"--set {text!r}: write KEY=VALUE (e.g. train.lr=0.1)")
            out.append((key.strip().split("."), parse_value(value.strip())))
    for key, value in items:
        out.append((str(key).split("."), value))
    return out


def set_path(d: dict, keys: Sequence[str], value) -> None:
    for k in keys[:-1]:
        if not isinstance(d.get(k), dict):
            d[k] = {}
        d = d[k]
    d[keys[-1]] = value


