"""Dataclass configs as plain data: YAML files, command-line overrides, and dicts saved inside checkpoints.

``add_arguments(parser, Cls)`` adds ``--field-name`` for every field (defaults left as ``None`` so that only what the
user typed overrides the YAML); ``build(Cls, yaml_path, args, **extra)`` merges defaults < YAML < command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Mapping

import yaml


def _base_type(tp):
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0]) if len(args) == 1 else str
    if origin in (list, tuple):
        return list
    return tp


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = (), help: Mapping[str, str] = {},
                  prefix: str = "") -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or dataclasses.is_dataclass(_base_type(hints[f.name])):
            continue
        tp = _base_type(hints[f.name])
        kwargs: dict[str, Any] = dict(default=None, dest=prefix + f.name, help=help.get(f.name))
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif tp is list and f.name in getattr(cls, "NUMERIC_LISTS", ()):
            kwargs.update(type=parse_numbers, metavar="X,Y,...")
        elif tp is list:
            kwargs.update(type=_parse_list, metavar="A,B,...")
        else:
            kwargs["type"] = tp if tp in (int, float) else str
        default = f.default if f.default is not dataclasses.MISSING else None
        if kwargs.get("help") is not None or default is not None:
            kwargs["help"] = f"{kwargs.get('help') or ''} (default: {default})".strip()
        parser.add_argument(_flag(f.name), **kwargs)


def _parse_list(text: str) -> list:
    out = []
    for part in text.split(","):
        part = part.strip()
        try:
            out.append(float(part) if any(c in part for c in ".e") else int(part))
        except ValueError:
            out.append(part)
    return out


def at_least(low: int):
    """An argparse ``type``: an integer >= ``low`` (checked before any work, reported as one line)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    return parse


def parse_numbers(text: str) -> list:
    """"-1,0.5,1" → [-1, 0.5, 1]; anything else is an argparse error (one line, before any work)."""
    values = _parse_list(text)
    bad = [v for v in values if not isinstance(v, (int, float))]
    if bad:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas (e.g. -1,0.5,1), got {text!r}")
    return values


def _check_numbers(cls, name: str, value) -> None:
    """A field listed in ``cls.NUMERIC_LISTS`` (from a YAML file or a dict) holds numbers only."""
    values = value if isinstance(value, (list, tuple)) else [value]
    if value is not None and any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        raise ValueError(f"{cls.__name__}.{name}: expected a list of numbers (e.g. [-1, 0.5, 1]), got {value!r}")


def parse_value(cls, name: str, text: str):
    """A field's value from text, typed as the field (bool: true/false/1/0/yes/no; none/null: None)."""
    tp = _base_type(typing.get_type_hints(cls)[name])
    if text.strip().lower() in ("none", "null"):
        return None
    if tp is bool:
        value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(text.strip().lower())
        if value is None:
            raise ValueError(f"{name}: {text!r} is not a boolean (true/false)")
        return value
    if tp is list:
        return _parse_list(text)
    try:
        return tp(text) if tp in (int, float) else text
    except ValueError:
        raise ValueError(f"{name}: {text!r} is not a{'n' if tp is int else ''} {tp.__name__}") from None


def overrides_from_args(cls, args: argparse.Namespace, prefix: str = "") -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    return {n: getattr(args, prefix + n) for n in names if getattr(args, prefix + n, None) is not None}


def load_yaml(path: str | Path | None) -> dict:
    if not path:
        return {}
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file must hold a mapping of field: value")
    return data


def from_dict(cls, data: Mapping[str, Any]):
    """Build a (possibly nested) dataclass from a dict, rejecting unknown keys by name."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}; known: {sorted(known)}")
    kwargs = {}
    for k, v in data.items():
        tp = _base_type(hints[k])
        if k in getattr(cls, "NUMERIC_LISTS", ()):
            _check_numbers(cls, k, v)
        if dataclasses.is_dataclass(tp) and isinstance(v, Mapping):
            v = tp.from_dict(v) if hasattr(tp, "from_dict") else from_dict(tp, v)
        elif tp is list and isinstance(v, tuple):
            v = list(v)
        kwargs[k] = v
    return cls(**kwargs)


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)
