"""Asset checks as every domain reports them: a table of what each check proves, failures per
partition, and the schema check all tables share."""

from __future__ import annotations

import dagster as dg
import pyarrow as pa

from imgpipeline.defs.tables import TABLES

SCHEMA_AS_DECLARED = "The stored Parquet of every hour has exactly the declared columns and types."

# A domain's checks: asset name → check name → what it proves (the UI shows it beside the asset).
Checks = dict[str, dict[str, str]]


def check_specs(checks: Checks, *assets: str) -> list[dg.AssetCheckSpec]:
    """The specs of the assets' checks, from a domain's table of checks."""
    return [dg.AssetCheckSpec(name, asset=TABLES[asset].key, description=text)
            for asset in assets for name, text in checks[asset].items()]


def no_failures(checks: Checks, *assets: str) -> dict[tuple[str, str], dict]:
    """An empty failure record per check: (asset, check) → {partition: what is wrong}."""
    return {(asset, name): {} for asset in assets for name in checks[asset]}


def check_results(failures: dict[tuple[str, str], dict], checked: int,
                  warnings: frozenset = frozenset()) -> list[dg.AssetCheckResult]:
    """One result per check over the run's partitions; those in `warnings` ((asset, check) pairs that
    report what the data says about its sources rather than a fault of the pipeline) only warn."""
    return [dg.AssetCheckResult(
        asset_key=TABLES[asset].key, check_name=name, passed=not failed,
        severity=dg.AssetCheckSeverity.WARN if (asset, name) in warnings else dg.AssetCheckSeverity.ERROR,
        metadata={"partitions_checked": checked,
                  "failures": dg.MetadataValue.json(dict(list(failed.items())[:20]))},
    ) for (asset, name), failed in failures.items()]


def schema_problems(table: pa.Table, schema: pa.Schema) -> list[str]:
    """Differences between a stored table's schema and the declared one."""
    if table.schema.remove_metadata().equals(schema):
        return []
    stored = {f.name: f.type for f in table.schema}
    problems = [f"missing column {f.name}" for f in schema if f.name not in stored]
    problems += [f"{f.name} is {stored[f.name]}, declared {f.type}" for f in schema
                 if f.name in stored and stored[f.name] != f.type]
    problems += [f"undeclared column {name}" for name in stored if name not in schema.names]
    return problems or ["column order differs from the declaration"]
