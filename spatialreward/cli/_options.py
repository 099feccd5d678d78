"""Command-line options generated from config dataclasses, so each knob is defined once (as TRL's `TrlParser`).

A config field's type, default and ``metadata["help"]`` become one typer option ``--field-name``; adding a field to
the dataclass adds its flag. A command declares only what is not a config field (arguments, command-only options)
plus ``**options``, and builds its configs from what it receives::

    @config_options(DistillConfig, StudentConfig, overrides={StudentConfig: "the preset's"})
    def distill(data: Annotated[Path, typer.Option(help=field_help(DistillConfig, "data"))], **options) -> None:
        cfg = build_config(DistillConfig, options, data=str(data))
        student = replace(preset_config(cfg.preset), **given_values(StudentConfig, options))

A config named in ``overrides`` changes a base config built elsewhere (a student preset): its flags default to
``None`` ("keep the base value", said in the help) and `given_values` returns only the fields actually given.

Supported field types: str, int, float, bool (``--x/--no-x``), Path, ``Literal[...]`` (a choice), ``dict`` (a JSON
object) and any of these ``| None``. A field of another type must be named in ``skip`` (or given by the command
itself): an unsupported type fails at import, not silently without a flag.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import types
import typing
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.markup import escape

_PLAIN = (str, int, float, bool, Path)


def comma_list(text: str) -> tuple[str, ...]:
    """A comma-separated option (``--views instruction,pixels``) as its non-empty, stripped items."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _json_object(text: str) -> dict:
    """Parse a ``dict`` field's flag: a JSON object such as ``'{"w_if": 0.7, "w_cons": 0.3}'``."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"{text!r} is not JSON ({exc.msg}); give an object like '{{\"key\": 1.0}}'") from exc
    if not isinstance(value, dict):
        raise typer.BadParameter(f"{text!r} is JSON but not an object; give an object like '{{\"key\": 1.0}}'")
    return value


def _option_type(owner: type, name: str, hint: Any) -> Any:
    """The annotation typer gets for one field's type hint (checked to be one typer can parse)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _option_type(owner, name, inner[0]) | None
    if origin is Literal or hint in _PLAIN or hint is dict:  # typer turns a Literal into a choice
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
    text = text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")
    return escape(text)  # typer renders help as rich markup: "[instruction; change tokens]" is text, not a tag


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return inspect.Parameter.empty  # required


def field_help(config: type, name: str) -> str:
    """The help text of field ``name`` of ``config``, for an option a command declares itself (a required path)."""
    for f in dataclasses.fields(config):
        if f.name == name:
            return _help(config, f)
    raise KeyError(f"{config.__name__} has no field {name!r}")


def option_parameters(
    config: type, *, skip: Collection[str] = (), panel: str | None = None, unset: str | None = None
) -> list[inspect.Parameter]:
    """One keyword-only ``inspect.Parameter`` per field of ``config`` not in ``skip``, annotated for typer.

    With ``unset`` (what an absent flag keeps, e.g. "the preset's") every option defaults to ``None`` instead of
    the field's default, so the command can tell a given value from an absent one."""
    hints = typing.get_type_hints(config)
    params = []
    for f in dataclasses.fields(config):
        if f.name in skip or not f.init:
            continue
        annotation = _option_type(config, f.name, hints[f.name])
        default = _default(f)
        optional = typing.get_origin(annotation) in (typing.Union, types.UnionType)
        plain = typing.get_args(annotation)[0] if optional else annotation  # the type without `| None`
        help_text = _help(config, f)
        extra: dict[str, Any] = {}
        if plain is dict:
            extra = {"parser": _json_object, "metavar": "JSON"}
            help_text += " A JSON object."
        if unset is not None:
            annotation, default = plain | None, None
            help_text += f" Unset: {unset}."
        flag = "--" + f.name.replace("_", "-")
        decls = (f"{flag}/--no-{flag[2:]}",) if plain is bool else (flag,)
        option = typer.Option(*decls, help=help_text, rich_help_panel=panel or config.__name__, **extra)
        params.append(
            inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                              annotation=Annotated[annotation, option])
        )
    return params


def config_options(
    *configs: type, skip: Collection[str] = (), overrides: Mapping[type, str] | None = None
) -> Callable[[Callable], Callable]:
    """Decorator: give a typer command one option per field of each config (fields the command declares itself,
    or names in ``skip``, are left to it). The command receives the generated values in ``**options``.

    ``overrides`` maps a config whose flags only change a base built elsewhere to what an absent flag keeps
    ("the preset's"): its options default to ``None``; read the given ones with `given_values`."""
    overrides = dict(overrides or {})
    unknown = [c.__name__ for c in overrides if c not in configs]
    if unknown:
        raise TypeError(f"overrides names {unknown}, which are not among the configs {[c.__name__ for c in configs]}")

    def decorate(command: Callable) -> Callable:
        own = inspect.signature(command, eval_str=True).parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in own.values()):
            raise TypeError(f"{command.__name__} must take **options to receive the generated config options")
        declared = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own.values()
                    if p.kind is not inspect.Parameter.VAR_KEYWORD]
        taken = {p.name for p in declared} | set(skip)
        generated: list[inspect.Parameter] = []
        for config in configs:
            for p in option_parameters(config, skip=taken, unset=overrides.get(config)):
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


def given_values(config: type, options: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of ``config`` whose option was given (not ``None``): the overrides of a base config."""
    names = {f.name for f in dataclasses.fields(config) if f.init}
    return {k: v for k, v in options.items() if k in names and v is not None}


def missing_flags(command: Callable, config: type, *, skip: Collection[str] = ()) -> list[str]:
    """Fields of ``config`` (not in ``skip``) that ``command`` has no parameter for: what a test asserts is empty."""
    have = set(inspect.signature(command).parameters)
    return [f.name for f in dataclasses.fields(config) if f.init and f.name not in skip and f.name not in have]
