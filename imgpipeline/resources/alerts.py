"""Alerts as a resource: the rules file, and where a person opens an alert (the viewer's address)."""

from __future__ import annotations

import re
from pathlib import Path

import dagster as dg
from pydantic import field_validator, model_validator

from imgpipeline import ConfigError
from imgpipeline.environment import environment
from imgpipeline.paths import PACKAGE_DIR, project_file
from imgpipeline.resources.settings import FromEnv, env_name, resolved, secret_kept, setting
from imgpipeline.vision import alert_rules
from imgpipeline.web.links import MIN_KEY_CHARS, EvidenceLinks

DEFAULT_ALERTS_FILE = "alerts.yaml"


class AlertsResource(FromEnv, dg.ConfigurableResource):
    """Which events raise alerts (`alerts.yaml`) and where people are sent to look at them."""

    alerts_file: str = setting(
        "IMGPIPELINE_ALERTS_FILE",
        "",
        "alert rules and their webhooks (YAML; docs/alerts.md); `none`: no alerts; unset: `alerts.yaml` in "
        "the project home, else the checkout's (the demo's rules, used only with the checkout's zones file)",
        shown="`alerts.yaml`",
    )
    viewer_url: str = setting(
        "IMGPIPELINE_VIEWER_URL",
        "http://127.0.0.1:8765",
        "the viewer's address as people reach it (`imgpipeline serve`): alert links in notifications and "
        "the daily report's link in the Dagster UI",
    )

    link_key: str | None = setting(
        "IMGPIPELINE_LINK_KEY", None,
        f"signs the links to an alert's snapshot and clip that notifications carry (a secret of "
        f"{MIN_KEY_CHARS} characters or more, the same for the code location and `imgpipeline serve`): the "
        "viewer serves that one image to the link's holder without its login until the link expires; "
        "unset: links without a signature, behind the viewer's login", secret=True)
    link_ttl_s: float = setting(
        "IMGPIPELINE_LINK_TTL_S", 7 * 86400.0, "seconds a signed evidence link stays valid from its send",
        gt=0, le=366 * 86400)

    @field_validator("link_key", mode="plain")
    @classmethod
    def _secret_kept(cls, value):
        return secret_kept(cls, "link_key", value)

    @field_validator("viewer_url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/]+(/\S*)?\Z", value):
            raise ValueError(f"IMGPIPELINE_VIEWER_URL={value!r} is not an http:// or https:// address")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _rules_readable(self):
        try:
            self.rules()
        except ConfigError as exc:
            raise ValueError(f"{exc}") from None
        return self

    def rules_path(self) -> Path | None:
        return project_file(self.alerts_file, DEFAULT_ALERTS_FILE)

    def rules(self) -> alert_rules.AlertRules:
        path = self.rules_path()
        if path is None:
            return alert_rules.no_rules()
        if not path.exists():
            raise ConfigError(f"IMGPIPELINE_ALERTS_FILE={self.alerts_file}: no such file; write one (see "
                              "docs/alerts.md) or unset it")
        return alert_rules.load(path)

    def for_zones(self, zones_path: Path | None) -> AlertsResource:
        """These settings with the zones file in use: the checkout's rules name the checkout's lines and
        zones, so with another zones file (a site's own) they are not used unless asked for."""
        path, checkout = self.rules_path(), PACKAGE_DIR.parent
        if (not self.alerts_file and path is not None and path.parent == checkout
                and (zones_path is None or zones_path.parent != checkout)):
            return AlertsResource(alerts_file="none", viewer_url=self.viewer_url, link_key=self.link_key,
                                  link_ttl_s=self.link_ttl_s)
        return self

    def check_against(self, zones, model=None) -> None:
        """The rules name lines and zones the zones file draws and classes the live model (a ModelSpec)
        knows; its classes go unchecked while its names file is not there yet (before a fetch)."""
        known = model.class_names() if model is not None and (model.folder / model.names).is_file() else None
        where = str(model.folder / model.names) if model is not None else None
        self.rules().check_against(zones, known, where)

    def links(self) -> EvidenceLinks | None:
        """The signer of evidence links, read from the environment now (None: no key set); a key too short to
        guess slowly is a ConfigError that says so."""
        key = resolved(self.link_key)
        if not key:
            return None
        if len(key) < MIN_KEY_CHARS:
            raise ConfigError(f"{env_name(type(self), 'link_key')} is {len(key)} characters: make it "
                              f"{MIN_KEY_CHARS} or more (e.g. `openssl rand -hex 32`)")
        return EvidenceLinks(key.encode(), self.link_ttl_s)

    def token(self, env: str) -> str | None:
        """A webhook's bearer token, from the environment only."""
        return environment().get(env) or None
