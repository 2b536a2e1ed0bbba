"""`imgpipeline settings`: every setting the project reads, from where it is declared.

The table of docs/configuration.md is `imgpipeline settings --markdown`; a test keeps the two equal.
"""

from __future__ import annotations

from imgpipeline.environment import environment


def all_rows() -> list[tuple[str, str, str, bool]]:
    """(variable, default, meaning, secret) of every setting: models first, then paths and tools."""
    import imgpipeline.environment
    from imgpipeline import paths
    from imgpipeline.cli import fetch
    from imgpipeline.resources.settings import rows
    from imgpipeline.services import kafka_broker

    found = []
    from imgpipeline.configuration import setting_models

    for model in setting_models():
        secret = {f.json_schema_extra["env"] for f in model.model_fields.values()
                  if f.json_schema_extra and f.json_schema_extra.get("secret")}
        found += [(env, default, meaning, env in secret) for env, default, meaning in rows(model)]
    for declared in (paths.SETTINGS, imgpipeline.environment.SETTINGS, fetch.SETTINGS, kafka_broker.SETTINGS):
        found += [(env, default, meaning, False) for env, default, meaning in declared]
    return found


def markdown_table() -> str:
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    lines += [f"| `{env}` | {default} | {meaning} |" for env, default, meaning, _ in all_rows()]
    return "\n".join(lines) + "\n"


def check_settings():
    """The settings tree built from the environment: a bad value raises ConfigError with its fix, and so
    does a setting that was renamed (it would be ignored without a word)."""
    from imgpipeline import ConfigError
    from imgpipeline.configuration import Settings
    from imgpipeline.defs.streaming.batch_policy import RENAMED

    current = environment()
    for old, new in RENAMED.items():
        if current.get(old, "").strip():
            raise ConfigError(f"{old} is no longer read: use {new}")
    return Settings.from_env()


def settings(args) -> int:
    if args.markdown:
        print(markdown_table(), end="")
        return 0
    check_settings()
    current = environment()
    for env, default, meaning, secret in all_rows():
        value = current.get(env)
        shown = "(not set)" if value is None else ("(set, secret)" if secret else value)
        print(f"  {env:<32} {shown:<40} default {default}: {meaning}")
    return 0
