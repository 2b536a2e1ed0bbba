"""One home per setting: a model field that declares its environment variable, default and meaning.

A setting is a field of the resource that uses it (or of a small settings model when no resource
owns it), declared with `setting(...)` and checked by that model's validators, so a resource built
directly (tests, benchmarks, probes) is checked exactly as one built from the environment.
`from_env()` fills the fields from `environment.environment()` and turns a validation error into a
`ConfigError` that names the variable and what to fix. Secrets become `dg.EnvVar`s: the value never
reaches run config, logs or metadata.
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import Field, ValidationError

from imgpipeline import ConfigError
from imgpipeline.environment import environment


def setting(env: str, default: Any = None, description: str = "", *, shown: str | None = None,
            secret: bool = False, default_factory=None, **constraints) -> Any:
    """A field read from the variable `env`; `shown` is the default as docs/configuration.md states it."""
    extra = {"env": env, "secret": secret, "shown": shown}
    if default_factory is not None:
        return Field(default_factory=default_factory, description=description,
                     json_schema_extra=extra, **constraints)
    return Field(default=default, description=description, json_schema_extra=extra, **constraints)


def one_of(model, name: str, value, choices):
    """A validator's answer: `value` when it is one of `choices`, else an error naming the variable."""
    if value not in choices:
        raise ValueError(f"{env_name(model, name)}={value!r} is not known; use one of {', '.join(choices)}")
    return value


def _extra(model, name: str) -> dict:
    return model.model_fields[name].json_schema_extra or {}


def env_name(model, name: str) -> str:
    """The environment variable of a setting, e.g. env_name(KafkaResource, "frames_topic")."""
    return _extra(model, name)["env"]


def resolved(value):
    """The value of a possibly unresolved `dg.EnvVar` (outside a Dagster run, e.g. the CLI)."""
    get_value = getattr(value, "get_value", None)
    return get_value() if callable(get_value) else value


def secret_kept(model: type, name: str, value):
    """A secret setting's value as given: `from_env` gives a `dg.EnvVar` (a str naming the variable), kept as
    it is and read when used; anything but text is refused."""
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{env_name(model, name)} is not text")
    return value


class FromEnv:
    """Mixin for pydantic models (and Dagster resources) whose fields are `setting`s."""

    def env_setting(self, name: str) -> str:
        """`VARIABLE=value` of one (non-secret) setting, for messages that say what to change."""
        return f"{env_name(type(self), name)}={getattr(self, name)}"

    @classmethod
    def env_value(cls, name: str):
        """One setting as the environment gives it (raw), else its default; nothing else is checked."""
        raw = environment().get(env_name(cls, name), "").strip()
        return raw or cls.model_fields[name].get_default(call_default_factory=True)

    @classmethod
    def from_env(cls, **overrides):
        """The model from the environment; overrides win. Raises ConfigError with the fix."""
        import dagster as dg

        variables = environment()
        values: dict[str, Any] = {}
        raw: dict[str, str] = {}
        for name in cls.model_fields:
            extra = _extra(cls, name)
            if "env" not in extra or name in overrides:
                continue
            value = variables.get(extra["env"], "").strip()
            if not value:
                continue
            if extra["secret"]:
                # Dagster resolves an EnvVar from os.environ when the resource is used: a secret
                # found only in an env file is exported to this process for that.
                os.environ.setdefault(extra["env"], value)
                values[name] = dg.EnvVar(extra["env"])
            else:
                values[name] = raw[name] = value
        try:
            return cls(**values, **overrides)
        except ValidationError as exc:
            raise ConfigError(_explain(cls, exc, raw)) from None


def _explain(model, exc: ValidationError, raw: dict[str, str]) -> str:
    """Each failed field as `VARIABLE=value: what is wrong` (our validators' messages as they are)."""
    lines = []
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        field = error["loc"][0] if error["loc"] else None
        if field in raw and error["type"] != "value_error":
            message = f"{env_name(model, field)}={raw[field]!r}: {message}"
        lines.append(message)
    return "; ".join(lines)


def declared(model) -> list[str]:
    """A model's fields in the order its classes declare them, base classes first: a field a subclass
    declares again takes the place the subclass gives it."""
    import inspect

    order: list[str] = []
    for klass in reversed(model.__mro__):
        for name in inspect.get_annotations(klass):
            if name in model.model_fields:
                order = [*(known for known in order if known != name), name]
    return order


def rows(model) -> list[tuple[str, str, str]]:
    """(variable, default as shown, meaning) of each setting of a model, in declaration order."""
    found = []
    for field in (model.model_fields[name] for name in declared(model)):
        extra = field.json_schema_extra or {}
        if "env" not in extra:
            continue
        default = extra["shown"]
        if default is None:
            value = field.get_default(call_default_factory=False)
            default = "—" if value is None else f"`{value}`"
        found.append((extra["env"], default, field.description or ""))
    return found
