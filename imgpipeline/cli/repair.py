"""`imgpipeline repair`: run every hole the reconciliation finds (offsets launched but not accounted
for) again, recorded in the project's Dagster instance."""

from __future__ import annotations


def repair(args) -> int:

    from imgpipeline.configuration import Settings
    from imgpipeline.defs.streaming.batch_policy import BatchPolicy
    from imgpipeline.defs.streaming.reconcile import coverage, repair_holes
    from imgpipeline.lib.instance import open_instance
    from imgpipeline.paths import state_dir
    from imgpipeline.services.dagster_dev import dagster_home

    resources = Settings.from_env().checked().resources()
    with open_instance(dagster_home(state_dir())) as instance:
        if args.dry_run:
            report = coverage(resources["storage"].open(), resources["kafka"], instance)
            for c in report:
                print(f"  partition {c.partition}: {c.missing} offsets missing in holes {c.holes[:10]}")
            return 1 if any(c.holes for c in report) else 0
        return 0 if repair_holes(instance, resources, BatchPolicy.from_env().max_batch) else 1
