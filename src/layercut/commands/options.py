"""Command-line flags derived from the methods' option declarations (`MethodOptions` subclasses):
one argument group per options class, one flag per option, its help the option's description.
Shared by `layercut prune`, `compare` and `slim`, so a method's options are declared only once."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from types import UnionType
from typing import Literal, Union, get_args, get_origin

from pydantic.fields import FieldInfo

from layercut.methods.base import MethodOptions, flag_name, resolve_options


def _without_none(annotation: object) -> object:
    """`int | None` -> `int`: an optional option parses as its type (unset stays None)."""
    if get_origin(annotation) in (Union, UnionType):
        present = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(present) == 1:
            return present[0]
    return annotation


def _add_flag(group: argparse._ArgumentGroup, name: str, field: FieldInfo) -> None:
    key = field.alias or name
    annotation = _without_none(field.annotation)
    if annotation is bool:
        group.add_argument(flag_name(key), dest=key, action="store_true", help=field.description)
        return
    choices = get_args(annotation) if get_origin(annotation) is Literal else None
    kind = annotation if annotation in (int, float) else str
    shown = "" if field.default is None else " (default: %(default)s)"
    group.add_argument(flag_name(key), dest=key, type=kind, choices=choices, default=field.default,
                       help=field.description + shown)


def add_option_groups(parser: argparse.ArgumentParser, option_types: Iterable[type[MethodOptions]]) -> None:
    """The flags of every class in `option_types`, grouped by the class that declares them (a class
    that extends another adds only its own options, once)."""
    done: set[type] = set()
    for options_type in option_types:
        for declaring in reversed(options_type.__mro__):
            if not issubclass(declaring, MethodOptions) or declaring in done:
                continue
            done.add(declaring)
            own = [name for name in declaring.__annotations__ if name in declaring.model_fields]
            if own:
                group = parser.add_argument_group(declaring.title)
                for name in own:
                    _add_flag(group, name, declaring.model_fields[name])


def options_from_args(args: argparse.Namespace, options_type: type[MethodOptions]) -> MethodOptions:
    """The validated values of `options_type`'s flags (a bad one is a `ConfigError` naming its flag)."""
    return resolve_options(options_type, {key: getattr(args, key) for key in options_type.keys()})
