"""Alert rules (`alerts.yaml`): the schema, its checks at load, and where alerts are sent.

A rule says what is worth a person's attention: classes seen, a crowd of them in one frame, an object
entering a zone, crossing a line or staying in a zone too long (from tracking), or a camera gone dark,
silent or frozen. Each names its severity and the webhooks that hear of it; every alert also goes to
the Kafka topic `alerts`. The file is checked as a whole when the code location loads.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from imgpipeline import ConfigError, is_camera
from imgpipeline.redaction import shown_url
from imgpipeline.vision import yaml_file

MAX_DEPTH = 8  # rules, rule, classes: 4 deep
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]{0,127}\Z")
# Rules look back at most the hour before the one evaluated (hourly alerts read it, no further).
WITHIN_AN_HOUR = {"gt": 0, "lt": 3600}


def _env_var(value: str) -> str:
    if not ENV_NAME.match(value):
        raise ValueError(f"{value!r} is not an environment variable name (write its name, not its value)")
    return value


# The name of the environment variable that holds a secret (a token, a password): never the secret itself.
EnvName = Annotated[str, AfterValidator(_env_var)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Target(_Strict):
    """Where alerts are sent, and how hard: tries at once, then later tries until `retry_for_s`."""

    attempts: int = Field(4, ge=1, le=10)
    backoff_s: float = Field(0.5, ge=0, le=60)  # doubled after each failed attempt
    timeout_s: float = Field(5.0, gt=0, le=60)
    # How long a refused alert is tried again by later ranges and runs before it is dead-lettered (0: not).
    retry_for_s: float = Field(3600, ge=0, le=7 * 86400)


class Webhook(_Target):
    """An HTTP(S) endpoint that receives each alert as a JSON POST: the alert's message (`json`), or a chat
    message with its snapshot's link (`slack`: Slack's incoming webhooks, Mattermost, Rocket.Chat)."""

    url: str = Field(max_length=2000)
    format: Literal["json", "slack"] = "json"
    inline_snapshot: bool = False  # the annotated frame's JPEG in the message too (base64), json only
    token_env: EnvName | None = None  # the variable holding a bearer token: never the token itself

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError(f"{shown_url(value, path=False)!r} is not an http:// or https:// address")
        return value

    @model_validator(mode="after")
    def _inline_in_json(self):
        if self.inline_snapshot and self.format != "json":
            raise ValueError("inline_snapshot is for `format: json` (a chat message links its snapshot)")
        return self


ADDRESS = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9.-]{1,253}\Z")
HOST_PORT = re.compile(r"^(?P<host>[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]):(?P<port>[0-9]{1,5})\Z")


class Email(_Target):
    """E-mail over SMTP: each alert as a message with its snapshot attached and its links."""

    to: list[str] = Field(min_length=1, max_length=20)
    sender: str = Field(alias="from")
    smtp: str  # host:port of the mail server
    security: Literal["starttls", "tls", "none"] = "starttls"  # none: only to a server on this machine
    user: str | None = Field(None, max_length=256)
    password_env: EnvName | None = None  # the variable holding the password: never the password itself

    @field_validator("to")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        if bad := [a for a in value if not ADDRESS.match(a)]:
            raise ValueError(f"not an e-mail address: {bad[0][:80]!r}")
        return value

    @field_validator("sender")
    @classmethod
    def _sender(cls, value: str) -> str:
        if not ADDRESS.match(value):
            raise ValueError(f"from: {value[:80]!r} is not an e-mail address")
        return value

    @field_validator("smtp")
    @classmethod
    def _host_port(cls, value: str) -> str:
        if not HOST_PORT.match(value) or not 0 < int(HOST_PORT.match(value)["port"]) < 65536:
            raise ValueError(f"smtp: {value[:80]!r} is not host:port (e.g. smtp.example.com:587)")
        return value

    @model_validator(mode="after")
    def _no_password_in_the_clear(self):
        if self.password_env and self.security == "none" and not self.on_this_machine():
            raise ValueError("security: none would send the password in the clear to another machine: use "
                             "starttls (port 587) or tls (port 465)")
        if bool(self.user) != bool(self.password_env):
            raise ValueError("user and password_env go together (a login), or neither")
        return self

    def address(self) -> tuple[str, int]:
        found = HOST_PORT.match(self.smtp)
        return found["host"].strip("[]"), int(found["port"])

    def on_this_machine(self) -> bool:
        return self.address()[0].lower() in ("localhost", "127.0.0.1", "::1")


def _target_kind(value) -> str:
    return "email" if isinstance(value, dict) and "to" in value or isinstance(value, Email) else "webhook"


Target = Annotated[Annotated[Webhook, Tag("webhook")] | Annotated[Email, Tag("email")],
                   Discriminator(_target_kind)]


class _Rule(_Strict):
    name: str
    severity: Literal["info", "warning", "critical"] = "warning"
    sources: list[str] | None = Field(None, min_length=1, max_length=1000)  # unset: every source
    notify: list[str] = Field(default_factory=list, max_length=20)  # names of webhooks and e-mails

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not NAME.match(value):
            raise ValueError(f"{value!r}: a rule name is 1–64 letters, digits, '.', '_' or '-'")
        return value

    def watches(self, source_id: str | None) -> bool:
        """Whether the rule is evaluated on a source: those it names, else every camera. A record of a
        message that named no source (its stand-in source id, or none in files landed before stand-ins)
        is no camera: it never fires, nor falls silent."""
        if self.sources is not None:
            return source_id in self.sources
        return is_camera(source_id)


class _Classes(_Rule):
    classes: list[str] = Field(min_length=1, max_length=80)


class _Episodes(_Rule):
    # Fires when its condition starts to hold: on a frame where it holds and held on no frame of the
    # source in the cooldown before. A condition that keeps holding is one alert.
    cooldown_s: float = Field(60.0, ge=0, lt=3600)


class ClassRule(_Episodes, _Classes):
    """Any of the classes seen with at least the confidence."""

    kind: Literal["class"]
    min_confidence: float = Field(0.5, ge=0, le=1)


class CountRule(_Episodes, _Classes):
    """At least `at_least` objects of the classes in one frame."""

    kind: Literal["count"]
    at_least: int = Field(ge=1, le=1000)
    min_confidence: float = Field(0.5, ge=0, le=1)


class ZoneEnterRule(_Rule):
    """A tracked object entering a zone of the zones file."""

    kind: Literal["zone_enter"]
    zone: str
    classes: list[str] | None = Field(None, min_length=1, max_length=80)


class LineCrossRule(_Rule):
    """A tracked object crossing a line of the zones file (`in`, `out` or `any` way)."""

    kind: Literal["line_cross"]
    line: str
    direction: Literal["in", "out", "any"] = "any"
    classes: list[str] | None = Field(None, min_length=1, max_length=80)


class DwellRule(_Rule):
    """A tracked object staying in a zone longer than `seconds` (fires once the time is reached)."""

    kind: Literal["dwell"]
    zone: str
    seconds: float = Field(**WITHIN_AN_HOUR)
    classes: list[str] | None = Field(None, min_length=1, max_length=80)


class DarkRule(_Episodes):
    """A camera gone dark: frames the dark filter skipped, or darker than `max_brightness` (0–255)."""

    kind: Literal["dark"]
    max_brightness: float | None = Field(None, ge=0, le=255)


class SilentRule(_Rule):
    """A camera gone silent: no frame from it for `minutes` while frames kept coming (from it or others)."""

    kind: Literal["silent"]
    minutes: float = Field(gt=0, lt=60)


class FrozenRule(_Episodes):
    """A camera frozen: `frames` consecutive frames with identical bytes."""

    kind: Literal["frozen"]
    frames: int = Field(3, ge=2, le=1000)


Rule = Annotated[
    ClassRule | CountRule | ZoneEnterRule | LineCrossRule | DwellRule | DarkRule | SilentRule | FrozenRule,
    Field(discriminator="kind"),
]


# What the alerts ledger records an alert's publication to Kafka under, beside its webhooks' names.
TOPIC_RECORD = "kafka"
MQTT_RECORD = "mqtt"  # likewise, its publication to MQTT (defs/alerts/mqtt_out.py)


class AlertsFile(_Strict):
    notify: dict[str, Target] = Field(default_factory=dict, max_length=50)
    rules: list[Rule] = Field(default_factory=list, max_length=200)

    @model_validator(mode="after")
    def _consistent(self):
        names = [rule.name for rule in self.rules]
        if dupes := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"rule names must be unique; repeated: {', '.join(dupes)}")
        for target in self.notify:
            if not NAME.match(target):
                raise ValueError(f"notify: {target!r}: a webhook name is 1–64 letters, digits, '.', '_', '-'")
            if target.lower() in (TOPIC_RECORD, MQTT_RECORD):
                where = "Kafka topic" if target.lower() == TOPIC_RECORD else "MQTT topic"
                raise ValueError(f"notify: {target!r} names the {where}'s own record of each alert sent: "
                                 "give the webhook another name")
        for rule in self.rules:
            if unknown := [t for t in rule.notify if t not in self.notify]:
                known = ", ".join(sorted(self.notify)) or "none are declared"
                raise ValueError(f"rule {rule.name!r} notifies {', '.join(unknown)}, not declared under "
                                 f"`notify:` ({known})")
        return self


class AlertRules:
    """A loaded rules file: the rules and webhooks, and the sha256 of the file's bytes."""

    def __init__(self, spec: AlertsFile, sha256: str | None, path: str | None = None):
        self.spec, self.sha256, self.path = spec, sha256, path

    @property
    def rules(self) -> list:
        return list(self.spec.rules)

    def rule(self, name: str):
        return next((r for r in self.spec.rules if r.name == name), None)

    def check_against(self, zones, class_names: list[str] | None, names_file: str | None = None) -> None:
        """Every zone and line a rule names is drawn (for its sources) and every class is the model's (its
        names read from `names_file`)."""
        for rule in self.spec.rules:
            place = getattr(rule, "zone", None) or getattr(rule, "line", None)
            if place is not None:
                kind = "zone" if hasattr(rule, "zone") else "line"
                drawn = {s: {item.name for item in getattr(zones.of(s), f"{kind}s")}
                         for s in (rule.sources or list(zones.spec.sources))}
                missing = sorted(s for s, names in drawn.items() if place not in names)
                if missing if rule.sources else len(missing) == len(drawn):
                    where = f"for {', '.join(missing)}" if rule.sources else "for any source"
                    raise ConfigError(f"{self.path}: rule {rule.name!r}: {kind} {place!r} is not drawn "
                                      f"{where} in the zones file ({zones.path or 'none configured'})")
            if class_names is not None:
                unknown = [c for c in (getattr(rule, "classes", None) or []) if c not in class_names]
                if unknown:
                    see = names_file or "its names file"
                    raise ConfigError(f"{self.path}: rule {rule.name!r}: the model knows no class "
                                      f"{', '.join(map(repr, unknown))} (see {see})")


def no_rules() -> AlertRules:
    return AlertRules(AlertsFile(), None)


def load(path: Path) -> AlertRules:
    """Read and check a rules file; a ConfigError says where it is wrong and what to write."""
    return parse(yaml_file.read_bounded(path, "alerts file"), str(path))


def parse(data: bytes, name: str = "alerts.yaml") -> AlertRules:
    spec = yaml_file.parse_model(data, name, AlertsFile, max_depth=MAX_DEPTH, needed="alert rules need 4",
                                 top="`rules:` (and `notify:`)", where=_where)
    return AlertRules(spec, hashlib.sha256(data).hexdigest(), name)


def _where(error: dict) -> str:
    text = yaml_file.error_text(error)
    if error["type"] == "union_tag_not_found":
        from imgpipeline.vision.rules import REGISTRY

        text += f" (kind is one of {', '.join(REGISTRY)})"
    return text
