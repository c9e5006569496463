"""Config dataclasses: strict construction from dicts / YAML, dotted ``key=value`` overrides.

Every concern (model, text encoder, data, training) has one dataclass deriving from
:class:`ConfigBase`. Unknown keys and values of the wrong type raise :class:`ConfigError`
naming the dotted key, so a typo in a YAML file or on the command line never goes unnoticed.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any, Mapping, TypeVar, Union

import yaml

from ditsam.schema import is_integer, key_problems

C = TypeVar("C", bound="ConfigBase")
# What PyYAML's safe loader raises for bad text: its own errors, and plain ones from the constructors of bad
# tagged scalars ("!!int abc", "!!bool maybe", a "!!timestamp" of month 13) and of nesting past the stack.
_YAML_FAILURES = (yaml.YAMLError, ValueError, LookupError, TypeError, ArithmeticError, RecursionError)
#: YAML 1.2 (core schema) booleans, integers and floats. PyYAML follows YAML 1.1, where ``no`` / ``on`` are
#: booleans and ``1e-3`` (no dot) is a string: ``train.mixed_precision=no`` would arrive as ``False`` and
#: ``train.lr=1e-3`` as ``"1e-3"``, both then refused by the field's type.
_YAML_12_SCALARS = {
    "tag:yaml.org,2002:bool": (r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    "tag:yaml.org,2002:int": (r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
    "tag:yaml.org,2002:float": (
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        "-+.0123456789",
    ),
}


#: YAML 1.1's other boolean words: a bool field given one is told to write true / false.
_YAML_11_BOOLEAN_WORDS = ("yes", "no", "on", "off", "y", "n")


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader reading booleans and numbers as YAML 1.2 does (``no`` is a string, ``1e-3`` a float)."""

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:  # type: ignore[override]
        text = str(self.construct_scalar(node))
        return int(text, 8 if text.startswith("0o") else 16 if text.startswith("0x") else 10)

    def construct_yaml_float(self, node: yaml.ScalarNode) -> float:  # type: ignore[override]
        text = str(self.construct_scalar(node)).lower()
        return float(text.replace(".inf", "inf").replace(".nan", "nan"))


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag not in _YAML_12_SCALARS]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _tag, (_pattern, _first_characters) in _YAML_12_SCALARS.items():
    _Yaml12Loader.add_implicit_resolver(_tag, re.compile(_pattern), list(_first_characters))
_Yaml12Loader.add_constructor("tag:yaml.org,2002:int", _Yaml12Loader.construct_yaml_int)
_Yaml12Loader.add_constructor("tag:yaml.org,2002:float", _Yaml12Loader.construct_yaml_float)
# Characters of a YAML error quoted in a message.
_QUOTED_CHARACTERS = 200


class ConfigError(ValueError):
    """A config key or value is not what the dataclass expects."""


def _check_value(value: Any, annotation: Any, key: str) -> Any:
    """Return ``value`` converted to ``annotation`` where that is lossless, else raise."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        errors = []
        for option in typing.get_args(annotation):
            try:
                return _check_value(value, option, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(f"{key}: {value!r} matches none of {annotation}")
    if annotation is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected null, got {value!r}")
    if origin is typing.Literal:
        choices = typing.get_args(annotation)
        if value in choices:
            return value
        raise ConfigError(f"{key}: {value!r} is not one of {list(choices)}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(annotation)
        item_type = args[0] if args else Any
        items = [_check_value(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if isinstance(annotation, type) and issubclass(annotation, ConfigBase):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping of {annotation.__name__} fields, got {value!r}")
        return annotation.from_dict(value, prefix=f"{key}.")
    if annotation is Any:
        return value
    if annotation is float and is_integer(value):
        try:
            return float(value)
        except OverflowError:
            raise ConfigError(f"{key}: {value} is beyond the range of a float") from None
    if annotation is int and isinstance(value, bool):
        raise ConfigError(f"{key}: expected int, got {value!r}")
    if annotation is bool and isinstance(value, str) and value.lower() in _YAML_11_BOOLEAN_WORDS:
        raise ConfigError(f"{key}: expected true or false, got {value!r} (a word, not a boolean, in YAML 1.2)")
    if isinstance(annotation, type) and not isinstance(value, annotation):
        raise ConfigError(f"{key}: expected {annotation.__name__}, got {type(value).__name__} {value!r}")
    return value


@dataclasses.dataclass
class ConfigBase:
    """Base of every config dataclass."""

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any], *, prefix: str = "") -> C:
        """Build from a mapping; unknown keys and wrong types raise :class:`ConfigError`."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{prefix or cls.__name__}: expected a mapping, got {data!r}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        _, unknown = key_problems(data, allowed=fields)
        # YAML keys need not be text (1, null, true / false): name them as written.
        unknown = sorted(prefix + (key if isinstance(key, str) else repr(key)) for key in unknown)
        if unknown:
            raise ConfigError(
                f"unknown config key(s) {', '.join(unknown)} for {cls.__name__}; "
                f"known keys: {', '.join(sorted(fields))}"
            )
        hints = typing.get_type_hints(cls)
        kwargs = {name: _check_value(value, hints[name], prefix + name) for name, value in data.items()}
        try:
            return cls(**kwargs)
        except ConfigError as error:  # a check across fields (__post_init__): say which section it is
            if not prefix:
                raise
            raise ConfigError(f"{prefix.rstrip('.')}: {error}") from None

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML/JSON-serialisable dict (tuples become lists)."""

        def plain(value: Any) -> Any:
            if isinstance(value, ConfigBase):
                return value.to_dict()
            if isinstance(value, (list, tuple)):
                return [plain(v) for v in value]
            return value

        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def with_overrides(self: C, overrides: Mapping[str, Any]) -> C:
        """Copy with dotted-key overrides applied, e.g. ``{"text.max_tokens": 16}``."""
        data = self.to_dict()
        for dotted, value in overrides.items():
            node = data
            parts = dotted.split(".")
            for part in parts[:-1]:
                if not isinstance(node.get(part), dict):
                    raise ConfigError(f"unknown config key {dotted!r} for {type(self).__name__}")
                node = node[part]
            if parts[-1] not in node:
                raise ConfigError(f"unknown config key {dotted!r} for {type(self).__name__}")
            node[parts[-1]] = value
        return type(self).from_dict(data)


def load_yaml(text: str, *, where: str) -> Any:
    """``text`` read by YAML's safe loader with YAML 1.2 booleans (``no`` is a string); any failure is a
    one-line :class:`ConfigError` naming ``where``."""
    try:
        return yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 -- a SafeLoader subclass
    except _YAML_FAILURES as error:
        reason = " ".join(str(error).split())
        if len(reason) > _QUOTED_CHARACTERS:
            reason = reason[: _QUOTED_CHARACTERS - 3] + "..."
        raise ConfigError(f"{where}: not valid YAML ({type(error).__name__}: {reason})") from error


def parse_override(text: str) -> tuple[str, Any]:
    """Parse one command-line ``key=value``; the value is read as YAML (``4``, ``true``, ``[1,2]``)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    return key.strip(), load_yaml(raw, where=f"override {text!r}") if raw.strip() else ""
