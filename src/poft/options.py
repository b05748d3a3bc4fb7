"""The command-line parser of poft's own option dataclasses (`poft score`, `inspect`, `filter`, `eval`,
`tiny-example`, the `--help` of `train` and `dpo`, and the experiments' entry points), without TRL.

A run of `poft train` or `poft dpo` parses TRL's config classes with TRL's own parser (`trl.TrlParser`):
hundreds of transformers options whose types only transformers' parser knows, not copied here. Everything
else needs nothing of TRL, and importing TRL's configs costs several seconds, so `poft inspect DIR` or
`poft train --help` would pay for a library they do not use. This parser follows TrlParser's conventions for the field types poft's dataclasses use, so
both kinds of command read the same way:
- every field is `--name` and, with underscores, also `--na-me`, plus its metadata's `aliases`; the rest
  of its metadata (help, choices, action) goes to argparse; a field without a default is required; defaults show in `--help`;
- `bool`: `--flag`, `--flag true|false|yes|no|1|0`, and `--no-flag` / `--no_flag` when it defaults to True;
- `T | None` (T not str): "none" / "null" give None; `list[T]`: one or more values;
- `--config FILE.yaml`: its keys replace the defaults (the command line overrides them), its `env` mapping
  is set in the environment, an unknown key is an error. Each value is checked against its field's type and
  choices (`config_value`): one error naming the key, the file and the type expected; a number for a string
  field is its text, and a single value for a list field (`model: path`) is a one-item list, as `--model
  path` is on the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
from collections.abc import Callable, Iterable
from typing import Any, Union, get_type_hints


def string_to_bool(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    if value.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if value.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(
        f"Truthy value expected: got {value} but expected one of yes/no, true/false, t/f, y/n, 1/0 (case insensitive)."
    )


def none_or(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    """`kind`, except that "none" / "null" (any case) give None."""

    def convert(value: str) -> Any:
        return None if isinstance(value, str) and value.lower() in ("none", "null") else kind(value)

    convert.__name__ = getattr(kind, "__name__", "value")  # argparse names the type in its errors
    return convert


def field_arguments(field: dataclasses.Field, kind: Any) -> list[tuple[list[str], dict]]:
    """The `add_argument` calls (option strings, keyword arguments) for one dataclass field of type `kind`."""
    names = [f"--{field.name}"] + ([f"--{field.name.replace('_', '-')}"] if "_" in field.name else [])
    kwargs = dict(field.metadata)
    aliases = kwargs.pop("aliases", [])
    names += [aliases] if isinstance(aliases, str) else list(aliases)
    has_default = field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING
    default = field.default if field.default is not dataclasses.MISSING else None
    if field.default_factory is not dataclasses.MISSING:
        default = field.default_factory()
    optional = False
    if isinstance(kind, types.UnionType) or getattr(kind, "__origin__", None) is Union:
        inner = [a for a in kind.__args__ if a is not type(None)]
        if len(inner) != 1:
            raise ValueError(f"{field.name}: only `T | None` unions are supported")
        optional, kind = True, inner[0]
    calls = []
    if kind is bool:
        default = False if not has_default else default
        calls.append(
            (names, {**kwargs, "type": string_to_bool, "default": default, "nargs": "?", "const": True})
        )
        if default is True:
            negated = [f"--no_{field.name}", f"--no-{field.name.replace('_', '-')}"]
            calls.append((negated, {**kwargs, "action": "store_false", "dest": field.name, "default": False}))
        return calls
    if getattr(kind, "__origin__", None) is list:
        kwargs.update(type=kind.__args__[0], nargs="+")
    else:
        kwargs["type"] = none_or(kind) if optional and kind is not str else kind
    if has_default:
        kwargs["default"] = default
    else:
        kwargs["required"] = True
    return [(names, kwargs)]


class OptionParser(argparse.ArgumentParser):
    """argparse over option dataclasses, with `--config FILE.yaml` (`parse_args_and_config`)."""

    def __init__(self, dataclass_types: Iterable[type], **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(**kwargs)
        self.dataclass_types = list(dataclass_types)
        self.field_types: dict[str, Any] = {}  # a config file's values are checked against these
        for dtype in self.dataclass_types:
            hints = get_type_hints(dtype)
            for field in dataclasses.fields(dtype):
                if field.init:
                    self.field_types[field.name] = hints[field.name]
                    for names, options in field_arguments(field, hints[field.name]):
                        self.add_argument(*names, **options)

    def parse_args_and_config(self, args: Iterable[str]) -> tuple:
        """One instance per dataclass, from `--config FILE.yaml` (if given) and the command line."""
        args = list(args)
        if "--config" in args:
            at = args.index("--config")
            args.pop(at)
            path = args.pop(at)
            self.set_defaults_from(read_config(path), path)
        namespace, unknown = self.parse_known_args(args)
        if unknown:
            raise ValueError(f"unrecognized arguments: {' '.join(unknown)}")
        values = vars(namespace)
        return tuple(
            dtype(
                **{f.name: values[f.name] for f in dataclasses.fields(dtype) if f.init and f.name in values}
            )
            for dtype in self.dataclass_types
        )

    def set_defaults_from(self, config: dict, source: str = "the config file") -> None:
        """A config file's values become the defaults (and required options are then given); unknown keys are
        an error, named. Each value is checked against its field's type (and choices) first: argparse
        converts only string defaults and checks no default's choices, so `model: path` for a list would be
        iterated letter by letter, and `max_length: 1.5` or `dtype: float64` would pass unchecked."""
        used = set()
        checked = {
            key: config_value(key, value, self.field_types[key], source)
            for key, value in config.items()
            if key in self.field_types
        }
        for action in self._actions:
            if action.dest in config:
                value = checked.get(action.dest, config[action.dest])
                check_choice(action, value, source)
                action.default, action.required = value, False
                used.add(action.dest)
        unknown = [key for key in config if key not in used]
        if unknown:
            raise ValueError(f"unknown keys in the config file: {', '.join(unknown)}")


KIND_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
ITEM_NAMES = {bool: "boolean", int: "integer", float: "number", str: "string"}
YAML_NAMES = {**ITEM_NAMES, list: "list", dict: "mapping", type(None): "null"}


def config_error(key: str, value: Any, expected: str, source: str) -> ValueError:
    shown = "null" if value is None else str(value).lower() if isinstance(value, bool) else repr(value)
    kind = YAML_NAMES.get(type(value), type(value).__name__)
    return ValueError(f"{source}: key {key!r} must be {expected}, got {shown} (a YAML {kind})")


def config_value(key: str, value: Any, kind: Any, source: str) -> Any:
    """A config file's `key: value` as the field of type `kind` takes it, or a ValueError naming the key, the
    file and the type expected. A single value where a list is expected (`model: path`) is a one-item list,
    as `--model path` is on the command line."""
    optional = isinstance(kind, types.UnionType) or getattr(kind, "__origin__", None) is Union
    if optional:
        inner = [a for a in kind.__args__ if a is not type(None)]
        if len(inner) != 1:  # `str | list[str] | None` (TRL's report_to): left to the library
            return value
        kind = inner[0]
    if value is None:
        if optional:
            return None
        expected = "a list" if getattr(kind, "__origin__", None) is list else KIND_NAMES.get(kind, "a value")
        raise config_error(key, value, expected, source)
    if getattr(kind, "__origin__", None) is list:
        item = kind.__args__[0]
        values = value if isinstance(value, list) else [value]
        expected = f"a list of {ITEM_NAMES.get(item, 'value')}s (or one {ITEM_NAMES.get(item, 'value')})"
        if any(isinstance(v, (list, dict)) for v in values):
            raise config_error(key, value, expected, source)
        return [scalar_value(key, v, item, source) for v in values]
    return scalar_value(key, value, kind, source)


def scalar_value(key: str, value: Any, kind: Any, source: str) -> Any:
    """One value of type `kind` (bool, int, float, str; others are left to the dataclass): a string is
    converted as the command line would, a number for a string field is taken as its text."""
    if kind not in KIND_NAMES:
        return value
    error = config_error(key, value, KIND_NAMES[kind], source)
    if isinstance(value, (list, dict)) or (isinstance(value, bool) and kind is not bool):
        raise error
    if kind is bool and not isinstance(value, (bool, str)):
        raise error
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise error
    try:
        converted = string_to_bool(value) if kind is bool else kind(value)
    except (TypeError, ValueError, argparse.ArgumentTypeError):
        raise error from None
    return converted


def check_choice(action: argparse.Action, value: Any, source: str) -> None:
    """A config value outside the option's choices, named with them (argparse checks only command-line ones)."""
    if not action.choices or value is None:
        return
    for item in value if isinstance(value, list) else [value]:
        if item not in action.choices:
            raise ValueError(
                f"{source}: key {action.dest!r} must be one of {', '.join(map(str, action.choices))}, "
                f"got {item!r}"
            )


def check_config_file(args: Iterable[str], dataclass_types: Iterable[type]) -> None:
    """The value types of `--config FILE.yaml` in `args`, for a parser that reads the file itself (TRL's, for
    `poft train` and `poft dpo`): the same check and errors as `OptionParser`, nothing changed."""
    args = list(args)
    if "--config" not in args or args.index("--config") + 1 >= len(args):
        return
    path = args[args.index("--config") + 1]
    config = read_config(path, set_env=False)
    for dtype in dataclass_types:
        hints = get_type_hints(dtype)
        for field in dataclasses.fields(dtype):
            if field.init and field.name in config:
                config_value(field.name, config[field.name], hints[field.name], path)


def read_config(path: str, set_env: bool = True) -> dict:
    """A YAML mapping of option values; its `env` mapping is set in the environment (unless `set_env` is
    false) and left out."""
    import yaml

    with open(path) as file:
        try:  # safe_load: plain data only, a `!!python/...` tag is refused, never constructed
            config = yaml.safe_load(file)
        except yaml.YAMLError as e:
            raise ValueError(
                f"config file {path} cannot be read as plain YAML: {' '.join(str(e).split())}"
            ) from e
    if not isinstance(config, dict):
        raise ValueError(f"Config file {path} must contain a YAML mapping.")
    env = config.pop("env", {})
    if not isinstance(env, dict):
        raise ValueError("`env` field should be a dict in the YAML file.")
    for key, value in env.items() if set_env else ():
        os.environ[key] = str(value)
    return config
