"""Typed settings: dataclasses read from plain mappings with errors that name the key.

Every configurable part of mmssl (a dataset, a method, the optimiser, the trainer…) declares
its settings as a dataclass with defaults. :func:`from_mapping` builds one from the nested
mapping a YAML file or ``--set KEY=VALUE`` flags give, checking every value against the field's
type annotation — ``int``, ``float`` (finite unless the field's metadata says
``{"finite": False}``), ``bool``, ``str``, ``Literal[...]``, ``list[T]``, ``tuple[T, ...]``,
``dict[str, T]``, ``T | None`` and nested settings — and then calls the dataclass's
``validate()`` if it has one. Problems are raised as :class:`SettingError` with the dotted key,
e.g. ``optim.lr: expected a finite number; got inf`` or ``unknown key 'optim.lrr'; valid keys
here: optimizer, lr, weight_decay, scheduler, max_lr``.

This module is the lowest layer: it knows nothing about runs, files or training.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

__all__ = ["SettingError", "from_mapping", "load_yaml_text", "require", "to_dict"]


class _Loader(yaml.SafeLoader):
    """YAML with ``true``/``false`` as the only booleans (YAML 1.1 also reads ``on``, ``off``,
    ``yes`` and ``no`` as booleans, which turns a key such as ``cca.on`` into ``True``)."""


_BOOL = "tag:yaml.org,2002:bool"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def load_yaml_text(text: str) -> Any:
    """Parse YAML safely, with only ``true``/``false`` as booleans."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass

T = TypeVar("T")


class SettingError(ValueError):
    """A setting with a bad value; ``key`` is its dotted name."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key
        self.message = message


def require(condition: bool, key: str, message: str) -> None:
    """Raise :class:`SettingError` ``key: message`` unless ``condition`` holds."""
    if not condition:
        raise SettingError(key, message)


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_settings(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, key: str, finite: bool = True) -> Any:
    """``value`` checked (and mildly converted) against the annotation ``tp``."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key, finite)
            except SettingError as error:
                errors.append(error.message)
        allowed = " or ".join(_name(o) for o in options)
        raise SettingError(key, f"expected {allowed}; got {_describe(value)}")
    if origin is Literal:
        options = get_args(tp)
        if value in options and not isinstance(value, bool):
            return value
        raise SettingError(key, f"expected one of {', '.join(map(str, options))}; got "
                                f"{_describe(value)}")
    if _is_settings(tp):
        if isinstance(value, tp):
            return value
        return from_mapping(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise SettingError(key, f"expected true or false; got {_describe(value)}")
    if tp is int:
        if isinstance(value, bool):
            raise SettingError(key, f"expected an integer; got {_describe(value)}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise SettingError(key, f"expected an integer; got {_describe(value)}")
    if tp is float:
        number: float | None = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                number = None
        if number is None:
            raise SettingError(key, f"expected a number; got {_describe(value)}")
        if finite and not math.isfinite(number):
            raise SettingError(key, f"expected a finite number; got {value}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise SettingError(key, f"expected text; got {_describe(value)}")
    if origin in (list, tuple):
        args = get_args(tp)
        item = args[0] if args else Any
        if isinstance(value, str) and item in (str, int, float):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise SettingError(key, f"expected a list; got {_describe(value)}")
        items = [_coerce(v, item, f"{key}[{i}]", finite) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        key_type, value_type = get_args(tp) or (Any, Any)
        if not isinstance(value, Mapping):
            raise SettingError(key, f"expected a mapping; got {_describe(value)}")
        return {_coerce(k, key_type, key, finite): _coerce(v, value_type, f"{key}.{k}", finite)
                for k, v in value.items()}
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise SettingError(key, f"expected {_name(tp)}; got {_describe(value)}")


def _name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(map(str, get_args(tp)))
    return getattr(tp, "__name__", str(tp))


def from_mapping(cls: type[T], values: Mapping[str, Any], prefix: str = "") -> T:
    """An instance of the settings dataclass ``cls`` from ``values`` (missing keys: defaults).

    Raises:
        SettingError: an unknown key (with the valid ones), a value of the wrong type, or a
            failed ``validate()`` of ``cls``; the dotted key is always named.
    """
    assert dataclasses.is_dataclass(cls)
    if not isinstance(values, Mapping):
        keys = [f.name for f in dataclasses.fields(cls) if not f.metadata.get("internal")]
        example = f"--set {prefix}.{keys[0]}=VALUE" if prefix and keys else "KEY: VALUE"
        raise SettingError(prefix, f"is a section (keys: {', '.join(keys)}); set one of its "
                                   f"keys, e.g. {example}; got {_describe(values)}")
    fields = {f.name: f for f in dataclasses.fields(cls)
              if f.init and not f.metadata.get("internal")}
    hints = typing.get_type_hints(cls)
    unknown = [k for k in values if k not in fields]
    if unknown:
        name = unknown[0]
        close = difflib.get_close_matches(str(name), list(fields), n=1)
        raise SettingError(
            "", f"unknown key {_join(prefix, str(name))!r}"
                f"{f' (did you mean {close[0]!r}?)' if close else ''}; valid keys here: "
                f"{', '.join(fields)}",
        )
    kwargs = {
        name: _coerce(value, hints[name], _join(prefix, name),
                      finite=fields[name].metadata.get("finite", True))
        for name, value in values.items()
    }
    instance = cls(**kwargs)
    validate = getattr(instance, "validate", None)
    if callable(validate):
        try:
            validate()
        except SettingError as error:
            raise SettingError(_join(prefix, error.key), error.message) from None
    return instance


def to_dict(settings: Any) -> dict[str, Any]:
    """Plain nested values of a settings dataclass (tuples as lists, for YAML and JSON)."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)
                    if not f.metadata.get("internal")}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        if isinstance(value, Mapping):
            return {k: plain(v) for k, v in value.items()}
        return value

    result = plain(settings)
    assert isinstance(result, dict)
    return result
