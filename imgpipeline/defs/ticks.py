"""What a sensor's tick reads, without what Dagster would build again for every tick.

A sensor that declares resources has them built on each tick together with a new `context.instance`:
on SQLite storage that opens the storage and checks its schema (most of a tick's CPU; on PostgreSQL a
new engine and connection), and a code server ticks its sensors every few seconds beside the runs. The
sensors here declare none: they take the resources the code location binds as they are, and the
instance the code server keeps for each instance it serves.
"""

from __future__ import annotations

import dagster as dg

_instances: dict[str, dg.DagsterInstance] = {}


def tick_instance(context: dg.SensorEvaluationContext) -> dg.DagsterInstance:
    """The instance the code server keeps for the tick's."""
    ref = context.instance_ref
    if ref is None:  # a context built around an instance object, as in tests
        return context.instance
    from dagster._serdes import serialize_value

    key = serialize_value(ref)
    return _instances.get(key) or _instances.setdefault(key, dg.DagsterInstance.from_ref(ref))


def bound(context: dg.SensorEvaluationContext, key: str):
    """The resource the code location binds to `key` (as given to the context when it has none, as in
    tests), built without an instance: the sensors' resources need none."""
    repository = context.repository_def
    definition = repository.get_top_level_resources().get(key) if repository is not None else None
    if definition is None:
        return getattr(context.resources, key)
    with dg.build_resources({key: definition}) as built:
        return getattr(built, key)
