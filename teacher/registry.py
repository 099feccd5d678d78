"""Teacher specs: the one place that turns ``--teacher`` strings into teachers.

=============================  ========================================================================
``oracle``                     exact labels for synthetic edits (`teacher/oracle.py`)
``vlm:PATH_OR_ID``             a VLM run with transformers from a local folder or a hub id
``openai:URL[#MODEL]``         a VLM behind an OpenAI-compatible server; without ``#MODEL`` the server's
                               ``/models`` list names it
=============================  ========================================================================

Heavy imports (torch, transformers, httpx) happen only for the teacher asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from spatialreward.teacher.base import Teacher, teacher_identity
from spatialreward.teacher.config import TeacherConfig, TeacherLoadError

Kind = Literal["oracle", "vlm", "openai"]
SPEC_HELP = "oracle | vlm:PATH_OR_HUB_ID | openai:URL[#MODEL]"


@dataclass(frozen=True)
class TeacherSpec:
    """A parsed ``--teacher`` value."""

    kind: Kind
    target: str = ""  # model path / hub id, or server URL
    model: str | None = None  # openai: model name after '#'

    def __str__(self) -> str:
        if self.kind == "oracle":
            return "oracle"
        return f"{self.kind}:{self.target}" + (f"#{self.model}" if self.model else "")


def parse_teacher_spec(spec: str) -> TeacherSpec:
    """``"openai:http://h:8000/v1#m"`` → ``TeacherSpec("openai", "http://h:8000/v1", "m")``; errors say the forms."""
    spec = spec.strip()
    if spec == "oracle":
        return TeacherSpec("oracle")
    kind, sep, rest = spec.partition(":")
    if sep and kind == "vlm" and rest:
        return TeacherSpec("vlm", rest)
    if sep and kind == "openai" and rest:
        url, _, model = rest.partition("#")
        if not url:
            raise TeacherLoadError(f"teacher {spec!r}: no URL after 'openai:' (expected {SPEC_HELP})")
        return TeacherSpec("openai", url, model or None)
    raise TeacherLoadError(f"unknown teacher {spec!r}; expected {SPEC_HELP}")


def make_teacher(spec: str | TeacherSpec, config: TeacherConfig | None = None, **options: Any) -> Teacher:
    """Build the teacher a spec names.

    VLM teachers take ``config`` with ``options`` overriding its fields; the oracle ignores ``config`` and gets
    ``options`` as constructor arguments.
    """
    parsed = spec if isinstance(spec, TeacherSpec) else parse_teacher_spec(spec)
    if parsed.kind == "oracle":
        from spatialreward.teacher.oracle import OracleTeacher

        return OracleTeacher(**options)
    config = _with_options(config or TeacherConfig(), options)
    from spatialreward.teacher.vlm import VLMTeacher

    if parsed.kind == "vlm":
        return VLMTeacher.from_pretrained(parsed.target, config)
    return VLMTeacher.from_openai(parsed.target, parsed.model, config)


def _with_options(config: TeacherConfig, options: dict[str, Any]) -> TeacherConfig:
    if not options:
        return config
    values = config.to_dict()
    unknown = sorted(set(options) - set(values))
    if unknown:
        raise TeacherLoadError(f"unknown teacher options {unknown}; TeacherConfig has {sorted(values)}")
    return TeacherConfig(**{**values, **options})


@dataclass(frozen=True)
class ResolvedTeacher:
    """What a driver knows of a teacher before any worker builds it (`resolve_teacher`)."""

    spec: TeacherSpec  # complete: an ``openai:`` spec names its model
    name: str  # label records' ``teacher`` field and the label folder
    identity: str  # exactly what answers (see `teacher_identity`)
    prompt_version: str


def resolve_teacher(spec: str | TeacherSpec, config: TeacherConfig | None = None) -> ResolvedTeacher:
    """The name, identity and prompt version of a teacher without loading a model.

    An ``openai:`` spec without ``#MODEL`` is completed by asking the server once, so every worker uses the same
    model name. The oracle teacher is cheap and is built to read its name.
    """
    from spatialreward.teacher.prompts import load_prompts
    from spatialreward.teacher.transformers_backend import vlm_identity, vlm_name

    parsed = spec if isinstance(spec, TeacherSpec) else parse_teacher_spec(spec)
    config = config or TeacherConfig()
    if parsed.kind == "oracle":
        oracle = make_teacher(parsed)
        return ResolvedTeacher(parsed, oracle.name, teacher_identity(oracle), oracle.prompt_version)
    version = load_prompts(config.prompt_file).version
    if parsed.kind == "vlm":
        return ResolvedTeacher(parsed, config.name or vlm_name(parsed.target), vlm_identity(parsed.target), version)
    from spatialreward.teacher.openai_backend import OpenAIBackend, normalize_base_url, openai_name

    model = parsed.model
    if model is None:
        model = OpenAIBackend.from_config(parsed.target, None, config).model
    parsed = TeacherSpec("openai", normalize_base_url(parsed.target), model)
    identity = openai_name(parsed.target, model)
    return ResolvedTeacher(parsed, config.name or identity, identity, version)
