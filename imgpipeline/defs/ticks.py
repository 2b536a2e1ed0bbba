"""What a sensor's tick reads, without what Dagster would build again for every tick.

A sensor that declares resources has them built on each tick together with a new `context.instance`:
on SQLite storage that opens the storage and checks its schema (most of a tick's CPU; on PostgreSQL a
new engine and connection), and a code server ticks its sensors every few seconds beside the runs. The
sensors here declare none: they take the resources the code location binds, built once per code server
(they are settings, with nothing to set up or tear down), and the instance the code server keeps for
each instance it serves.
"""

from __future__ import annotations

import threading

import dagster as dg

_lock = threading.Lock()
_instances: dict[str, dg.DagsterInstance] = {}
_resources: dict[tuple[str, int], tuple[object, object]] = {}


def tick_instance(context: dg.SensorEvaluationContext) -> dg.DagsterInstance:
    """The instance the code server keeps for the tick's."""
    ref = context.instance_ref
    if ref is None:  # a context built around an instance object, as in tests
        return context.instance
    from imgpipeline.lib.dagster_door import serialize_value

    key = serialize_value(ref)
    with _lock:
        if key not in _instances:
            _instances[key] = dg.DagsterInstance.from_ref(ref)
        return _instances[key]


def bound(context: dg.SensorEvaluationContext, key: str):
    """The resource given to the context for `key` (as tests give them), else the one the code location
    binds, built on the first tick that asks for it and kept."""
    if key in (context.resource_defs or {}):
        return getattr(context.resources, key)
    definition = context.repository_def.get_top_level_resources()[key]
    with _lock:
        kept = _resources.get((key, id(definition)))
    if kept is None:
        with dg.build_resources({key: definition}, instance=tick_instance(context)) as built:
            # kept with its definition, whose id is then never another's
            kept = (definition, getattr(built, key))
        with _lock:
            kept = _resources.setdefault((key, id(definition)), kept)
    return kept[1]
