"""Sensor ticks as the code server evaluates them: the code location's resources, built once, and no
Dagster instance built per tick."""

from __future__ import annotations

import dagster as dg
from dagster._grpc.impl import get_external_sensor_execution


def test_ticks_take_the_bound_resources_and_build_no_instance_after_the_first(tmp_path, monkeypatch):
    from imgpipeline.definitions import defs
    from imgpipeline.defs import ticks
    from imgpipeline.resources import StorageResource

    monkeypatch.setattr(ticks, "_instances", {})
    monkeypatch.setattr(ticks, "_resources", {})
    built = []
    for name in ("from_ref", "ephemeral"):
        real = getattr(dg.DagsterInstance, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            built.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(dg.DagsterInstance, name, staticmethod(spy))
    repository = defs.get_repository_def()
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        ref = instance.get_ref()
        for tick in range(3):
            result = get_external_sensor_execution(repository, None, ref, "retrack_sensor", None, None, None,
                                                   None, None)
            assert getattr(result, "error", None) is None, result.error
            assert result.skip_message == "no hour to track again"
            if tick == 0:
                first = list(built)
        assert first == ["from_ref"]  # the code server's one instance for this instance ref
        assert built == first  # and nothing more on the ticks after

        context = dg.build_sensor_context(instance=instance, repository_def=repository)
        storage = ticks.bound(context, "storage")
        assert storage is ticks.bound(context, "storage")  # built once, kept
        # the code location's own (built from the settings when the definitions were imported)
        assert storage.uri == defs.resources["storage"].uri
        other = StorageResource(uri=(tmp_path / "other").as_uri())
        with dg.build_sensor_context(instance=instance, repository_def=repository,
                                     resources={"storage": other}) as given:
            assert ticks.bound(given, "storage").uri == other.uri  # what a test gives wins
