"""Typed dataclass configs on the command line.

Every field of a config dataclass becomes an option (``--field-name``; nested dataclasses as
``--inner.field-name``), with its help text taken from the ``name: description`` lines of the
class docstring. ``--config FILE.yaml`` loads a YAML file first; command-line options override
it. Unknown options (on the command line or in the file) are errors.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import types
import typing
from collections.abc import Mapping
from typing import Any

from safetwin.safety.runio import ConfigError, config_from_dict, load_yaml

_SCALARS = (str, int, float)


def _field_docs(cls: type) -> dict[str, str]:
    doc = inspect.getdoc(cls) or ""
    docs: dict[str, str] = {}
    for match in re.finditer(r"^\s*([a-z_][a-z0-9_]*)\s*(?:\([^)]*\))?:\s*(.+)$", doc, re.MULTILINE):
        docs.setdefault(match.group(1), match.group(2).strip())
    return docs


def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return hint, False


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {text!r}")


def _converter(hint: Any) -> tuple[Any, str | None]:
    """argparse ``type`` and ``nargs`` for one field type."""
    hint, optional = _unwrap_optional(hint)
    origin = typing.get_origin(hint)
    if hint is bool:
        return _parse_bool, None
    if hint in _SCALARS:
        return hint, None
    if origin in (tuple, list):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        inner = args[0] if args and args[0] in _SCALARS else str
        return inner, "*"
    if origin is typing.Literal:
        return str, None
    return str, None


def add_dataclass_options(parser: argparse.ArgumentParser, cls: type, prefix: str = "") -> None:
    """Add one option per (nested) field of dataclass ``cls`` to ``parser``."""
    hints = typing.get_type_hints(cls)
    docs = _field_docs(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            add_dataclass_options(parser, hint, f"{prefix}{f.name}.")
            continue
        conv, nargs = _converter(hint)
        flag = "--" + (prefix + f.name).replace("_", "-")
        kwargs: dict[str, Any] = {"dest": prefix + f.name, "type": conv, "default": argparse.SUPPRESS,
                                  "help": docs.get(f.name, "")}
        if nargs:
            kwargs["nargs"] = nargs
        elif conv is _parse_bool:  # `--flag` alone means true; `--flag false` is accepted too
            kwargs.update(nargs="?", const=True)
        if typing.get_origin(hint) is typing.Literal:
            kwargs["choices"] = list(typing.get_args(hint))
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        # argparse %-formats help strings: a literal "%" in a docstring ("within 20% of") must be escaped
        kwargs["help"] = f"{kwargs['help']} (default: {default!r})".strip().replace("%", "%%")
        parser.add_argument(flag, **kwargs)


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = tuple(value) if isinstance(value, list) else value
    return nested


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def build_config(cls: type, args: argparse.Namespace, config_file: str | None = None,
                 skip: tuple[str, ...] = ()) -> Any:
    """The config from ``--config`` (if any) overridden by the command-line options."""
    file_data: dict[str, Any] = {}
    if config_file:
        loaded = load_yaml(config_file)
        if not isinstance(loaded, Mapping):
            raise ConfigError(f"{config_file}: the config must be a mapping of options")
        file_data = dict(loaded)
    flat = {k: v for k, v in vars(args).items() if k not in skip and not k.startswith("_")}
    return config_from_dict(cls, _merge(file_data, _nest(flat)), where=config_file or "command line")
