"""Who may reach the viewer (`imgpipeline serve`) and the metrics endpoint (`imgpipeline metrics`): the host
names they answer to besides the address they listen on, and the viewer's login (the password from the
environment only)."""

from __future__ import annotations

import ipaddress
import re

from pydantic import BaseModel, ConfigDict, field_validator

from imgpipeline.resources.settings import FromEnv, env_name, resolved, secret_kept, setting

HOST_NAME = re.compile(r"[A-Za-z0-9.-]{1,253}")


class ViewerAccess(FromEnv, BaseModel):
    """The trusted host names and the viewer's login."""

    model_config = ConfigDict(extra="forbid")

    hosts: str = setting(
        "IMGPIPELINE_TRUSTED_HOSTS", "",
        "host names (comma-separated, no port) the viewer and the metrics endpoint answer to besides the "
        "address they listen on: the names people and Prometheus reach them by; any other Host gets a 400",
        shown="—")
    user: str = setting("IMGPIPELINE_VIEWER_USER", "viewer", "the viewer's login name (HTTP basic auth)",
                        min_length=1)
    password: str | None = setting(
        "IMGPIPELINE_VIEWER_PASSWORD", None,
        "the viewer's login password (a secret): when set, every request logs in; `serve` beyond loopback "
        "(`--host 0.0.0.0`) refuses to start without it", secret=True)

    @field_validator("hosts")
    @classmethod
    def _names_only(cls, value: str) -> str:
        for name in host_list(value):
            if not HOST_NAME.fullmatch(name) and not is_ip(name):
                raise ValueError(f"{env_name(cls, 'hosts')}: {name[:60]!r} is not a host name or address "
                                 "(names only: no scheme, port or path)")
        return value

    @field_validator("password", mode="plain")
    @classmethod
    def _secret_kept(cls, value):
        return secret_kept(cls, "password", value)

    def host_names(self) -> list[str]:
        """The configured names, lower case."""
        return [name.lower() for name in host_list(self.hosts)]

    def login(self) -> tuple[str, str] | None:
        """(user, password) when a password is set, read from the environment now; else None."""
        password = resolved(self.password)
        return (self.user, password) if password else None

    def env(self, name: str) -> str:
        """The variable of one of these settings, for messages that say what to set."""
        return env_name(type(self), name)


def host_list(value: str) -> list[str]:
    return [name.strip().strip("[]") for name in value.split(",") if name.strip()]


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
