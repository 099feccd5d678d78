"""Command-line options generated from config dataclasses, so each knob is defined once (as TRL's `TrlParser`).

A config field's type, default and ``metadata["help"]`` become one typer option ``--field-name``; adding a field to
the dataclass adds its flag. A command declares only what is not a config field (arguments, command-only options)
plus ``**options``, and builds its configs from what it receives::

    @config_options(DistillConfig, StudentConfig, skip={"preset"})
    def distill(data: Annotated[Path, typer.Option(help="...")], **options) -> None:
        cfg = build_config(DistillConfig, options, data=data)

Supported field types: str, int, float, bool (``--x/--no-x``), Path, ``Literal[...]`` (a choice), and any of these
``| None``. A field of another type must be named in ``skip`` (or given by the command itself): an unsupported type
fails at import, not silently without a flag.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

_PLAIN = (str, int, float, bool, Path)


def _option_type(owner: type, name: str, hint: Any) -> Any:
    """The annotation typer gets for one field's type hint (checked to be one typer can parse)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _option_type(owner, name, inner[0]) | None
    if origin is Literal or hint in _PLAIN:  # typer turns a Literal into a choice
        return hint
    raise TypeError(
        f"{owner.__name__}.{name}: type {hint!r} has no command-line form; name it in skip= "
        "or declare the option in the command itself"
    )


def _help(owner: type, f: dataclasses.Field) -> str:
    text = f.metadata.get("help")
    if not text:
        raise TypeError(f"{owner.__name__}.{f.name} has no metadata['help']: every config field documents itself")
    text = str(text)
    return text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return inspect.Parameter.empty  # required


def option_parameters(config: type, *, skip: Collection[str] = (), panel: str | None = None) -> list[inspect.Parameter]:
    """One keyword-only ``inspect.Parameter`` per field of ``config`` not in ``skip``, annotated for typer."""
    hints = typing.get_type_hints(config)
    params = []
    for f in dataclasses.fields(config):
        if f.name in skip or not f.init:
            continue
        annotation = _option_type(config, f.name, hints[f.name])
        default = _default(f)
        flag = "--" + f.name.replace("_", "-")
        decls = (f"{flag}/--no-{flag[2:]}",) if annotation is bool else (flag,)
        option = typer.Option(*decls, help=_help(config, f), rich_help_panel=panel or config.__name__)
        params.append(
            inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                              annotation=Annotated[annotation, option])
        )
    return params


def config_options(*configs: type, skip: Collection[str] = ()) -> Callable[[Callable], Callable]:
    """Decorator: give a typer command one option per field of each config (fields the command declares itself,
    or names in ``skip``, are left to it). The command receives the generated values in ``**options``."""

    def decorate(command: Callable) -> Callable:
        own = inspect.signature(command, eval_str=True).parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in own.values()):
            raise TypeError(f"{command.__name__} must take **options to receive the generated config options")
        declared = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own.values()
                    if p.kind is not inspect.Parameter.VAR_KEYWORD]
        taken = {p.name for p in declared} | set(skip)
        generated: list[inspect.Parameter] = []
        for config in configs:
            for p in option_parameters(config, skip=taken):
                generated.append(p)
                taken.add(p.name)  # a name shared by two configs gets one flag (the first config's help)

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            return command(**kwargs)

        wrapper.__signature__ = inspect.Signature(declared + generated)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {}  # typer reads the signature; stale string hints would override it
        return wrapper

    return decorate


def build_config(config: type, options: Mapping[str, Any], **given: Any) -> Any:
    """``config(**fields)`` from the generated ``options`` (only its own fields) plus explicit values in ``given``."""
    names = {f.name for f in dataclasses.fields(config) if f.init}
    values = {k: v for k, v in options.items() if k in names}
    values.update({k: v for k, v in given.items() if k in names})
    return config(**values)


def missing_flags(command: Callable, config: type, *, skip: Collection[str] = ()) -> list[str]:
    """Fields of ``config`` (not in ``skip``) that ``command`` has no parameter for: what a test asserts is empty."""
    have = set(inspect.signature(command).parameters)
    return [f.name for f in dataclasses.fields(config) if f.init and f.name not in skip and f.name not in have]
