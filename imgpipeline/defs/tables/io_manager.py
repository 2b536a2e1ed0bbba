"""The code location's IO manager: the warehouse's tables handed to an asset of one's own.

An asset that takes `detections` (or frames, class_hours, tracks, alerts, daily_summary) as a parameter
receives the rows of the partitions it maps to: an hourly asset the hour's, a daily asset the day's 24
hours, an unpartitioned one every stored hour. An hour not built adds no rows. The rows come as a pandas
DataFrame, or as a pyarrow Table when the parameter is annotated so (docs/warehouse.md#assets-of-your-own).

Every other value (an asset's or op's own output) goes where Dagster's filesystem IO manager keeps it, as
before: the project's tables are written by their own assets, not through this manager."""

from __future__ import annotations

import dagster as dg
import pyarrow as pa

from imgpipeline.defs.hours import days_in, hours_in
from imgpipeline.defs.tables import TABLES, Table
from imgpipeline.resources import StorageResource
from imgpipeline.resources.storage import Storage


def rows_of(store: Storage, table: Table, window) -> pa.Table:
    """The table's stored rows of the hours (or days) of a partition time window, the table's own columns
    first; a day's files listed once, so a window of a year reads what is stored without asking for each
    hour."""
    keys = ([table.day_key(day) for day in days_in(window)] if table.daily
            else [table.hour_key(hour) for hour in hours_in(window)])
    folders = dict.fromkeys(key.rsplit("/", 2 if not table.daily else 1)[0] + "/" for key in keys)
    stored = {key for folder in folders for key in store.list(folder)}
    read = [table.read(store, key).replace_schema_metadata(None) for key in keys if key in stored]
    return pa.concat_tables([table.empty(), *read], promote_options="default")


def as_annotated(rows: pa.Table, wanted: type) -> object:
    """The rows as the parameter asks: a pyarrow Table, else a pandas DataFrame."""
    return rows if wanted is pa.Table else rows.to_pandas()


class TableInputs(dg.IOManager):
    """Loads an input from a warehouse table out of the storage; everything else as `files` does."""

    def __init__(self, files: dg.IOManager, storage: StorageResource):
        self.files, self.storage = files, storage

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        self.files.handle_output(context, obj)

    def load_input(self, context: dg.InputContext):
        path = context.asset_key.path if context.has_asset_key else []
        table = TABLES.get(path[0]) if len(path) == 1 else None
        if table is None:
            return self.files.load_input(context)
        if table.part != "part-0":
            raise dg.Failure(f"{table.name} keeps a file per zones file, which an input cannot choose among: "
                             f"read it with `imgpipeline query` (docs/warehouse.md)")
        window = context.asset_partitions_time_window
        rows = rows_of(self.storage.open(), table, window)
        context.log.info(f"{rows.num_rows} rows of {table.name} from {window.start} to {window.end}")
        return as_annotated(rows, context.dagster_type.typing_type)


class TablesIOManager(dg.FilesystemIOManager):
    """Dagster's filesystem IO manager (its `base_dir`, by default the instance's storage folder) that also
    hands the warehouse's tables to the assets that take them as inputs."""

    storage: StorageResource

    def create_io_manager(self, context: dg.InitResourceContext) -> dg.IOManager:
        return TableInputs(super().create_io_manager(context), self.storage)
