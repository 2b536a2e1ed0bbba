"""YAML files a person writes (lines and zones, alert rules): read with a bound, parsed safely.

A config file is untrusted input too: its size is bounded (reading stops one byte past the limit, so
`/dev/zero` is refused), aliases are refused (a few bytes of nested aliases expand to billions of
nodes), deep nesting is refused from the parser's events before anything recursive runs, and a key
written twice is an error rather than a silent override. Errors name the file, the line and the fix.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from imgpipeline import ConfigError

MAX_FILE_BYTES = 1_000_000


class _NoAliases(yaml.SafeLoader):
    """Safe YAML without aliases, with plain keys each written once."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed", self.peek_event().start_mark
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        """A key written twice is a mistake (the second would silently win): refused."""
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, str | int | float | bool | None):
                raise yaml.constructor.ConstructorError(
                    None, None, "a key must be a plain name or number", key_node.start_mark)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"{key!r} is written twice in one mapping", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _shallow(text: str, name: str, max_depth: int, needed: str) -> None:
    """Refuse deep nesting before building anything: the parser's events come without recursion,
    building nested objects would recurse once per level."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > max_depth:
                line = event.start_mark.line + 1
                raise ConfigError(f"{name}: nested more than {max_depth} deep at line {line}; {needed}")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def read_bounded(path: Path, what: str) -> bytes:
    """A config file's bytes, at most MAX_FILE_BYTES of them."""
    try:
        with path.open("rb") as file:  # at most one byte more than allowed: /dev/zero is refused too
            data = file.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot read it ({exc.strerror})") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"{what} {path}: more than {MAX_FILE_BYTES} bytes; {what}s fit in less")
    return data


def parse_model(data: bytes, name: str, model, *, max_depth: int, needed: str, top: str, where=None):
    """A YAML document, a mapping (`top` says what it should hold), validated as `model`; `where`
    words a validation error (default: its path and message)."""
    return validated(model, _parse_mapping(data, name, max_depth=max_depth, needed=needed, top=top), name,
                     where)


def _parse_mapping(data: bytes, name: str, *, max_depth: int, needed: str, top: str) -> dict:
    try:
        text = data.decode("utf-8")
        _shallow(text, name, max_depth, needed)
        document = yaml.load(text, Loader=_NoAliases) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"{name}: not UTF-8 text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{name}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{name}: expected a mapping with {top}, got {type(document).__name__}")
    return document


def validated(model, document: dict, name: str, where=None):
    """The model validated from a document, every error in one ConfigError."""
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        describe = where or error_text
        raise ConfigError(f"{name}: " + "; ".join(describe(e) for e in exc.errors()[:10])) from None


def error_text(error: dict) -> str:
    path = ".".join(str(part) for part in error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    return f"{path}: {message}" if path else message
