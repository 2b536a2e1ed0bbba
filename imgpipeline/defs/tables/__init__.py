"""The table layer every domain stands on: each asset's key, each table's schema, storage keys and
Parquet, and the reader of stored hours. Domains import this and each other only downward
(streaming → warehouse → tracking → alerts / reports); nothing here imports a domain.

Hourly tables live at `warehouse/<table>/dt=YYYY-MM-DD/hour=HH/part-0.parquet` (object_counts:
`zones-<sha256[:12]>.parquet`, one file per zones file), the daily summary at
`warehouse/daily_summary/dt=YYYY-MM-DD/part-0.parquet`, on the local folder or S3 alike.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from datetime import date, datetime

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq

from imgpipeline.defs.hours import hour_path
from imgpipeline.defs.tables.schemas import (
    ALERTS_SCHEMA,
    CLASS_HOURS_SCHEMA,
    DAILY_SUMMARY_SCHEMA,
    DETECTIONS_SCHEMA,
    FRAMES_SCHEMA,
    IDENTITY,
    OBJECT_COUNTS_SCHEMA,
    TRACKS_SCHEMA,
    TS,
)
from imgpipeline.resources.storage import Storage

__all__ = ["IDENTITY", "TS", "Table", "TABLES", "FRAMES", "DETECTIONS", "CLASS_HOURS", "DAILY_SUMMARY",
           "TRACKS", "OBJECT_COUNTS", "ALERTS", "TOPIC_ASSET", "LANDING_ASSET", "REPORT_ASSET", "ASSET_KEYS",
           "TRACKED_COLUMNS", "to_parquet", "from_parquet"]

_DAY, _HOUR = "dt=[0-9]{4}-[0-9]{2}-[0-9]{2}", "hour=[0-9]{2}"


@dataclass(frozen=True)
class Table:
    """A warehouse table: its asset's key, its columns, and where its files lie.

    `daily`: one file per day, else per hour. `part`: the shape of a file's name (a regular expression
    without the `.parquet`): `part-0` for all but object_counts, whose files are named by zones file.
    """

    name: str
    schema: pa.Schema
    daily: bool = False
    part: str = "part-0"

    @property
    def key(self) -> dg.AssetKey:
        return dg.AssetKey(self.name)

    @property
    def folder(self) -> str:
        return f"warehouse/{self.name}/"

    def hour_key(self, hour: datetime, part: str = "part-0") -> str:
        return f"{self.folder}{hour_path(hour)}/{part}.parquet"

    def day_key(self, day: date) -> str:
        return f"{self.folder}dt={day.isoformat()}/part-0.parquet"

    def is_key(self, key: str) -> bool:
        """Whether `key` is one of the table's files exactly as hour_key and day_key name them: nothing
        else under the table's folder is read (a quote, a newline or a glob character never is)."""
        shape = _DAY if self.daily else f"{_DAY}/{_HOUR}"
        return re.fullmatch(f"{re.escape(self.folder)}{shape}/{self.part}\\.parquet", key) is not None

    def empty(self, columns: list[str] | None = None) -> pa.Table:
        table = self.schema.empty_table()
        return table.select(columns) if columns else table

    def concat(self, tables: list[pa.Table]) -> pa.Table:
        return pa.concat_tables(tables) if tables else self.empty()

    def write(self, store: Storage, key: str, table: pa.Table) -> None:
        store.put(key, to_parquet(table))

    def read(self, store: Storage, key: str, columns: list[str] | None = None) -> pa.Table:
        return from_parquet(store.get(key), columns)

    def stored_hour(self, store: Storage, hour: datetime, columns: list[str] | None = None) -> pa.Table:
        """An hour of the table as stored (of `columns` only, when given), with its metadata (empty when
        the hour is not stored yet)."""
        key = self.hour_key(hour)
        return self.read(store, key, columns) if store.exists(key) else self.empty(columns)

    def stored_hours(self, store: Storage, hours: list[datetime], columns: list[str]) -> pa.Table:
        """The given columns of the table's stored hours (hours not stored yet add nothing)."""
        return pa.concat_tables([self.empty(columns),
                                 *(self.stored_hour(store, hour).select(columns) for hour in hours)])


FRAMES = Table("frames", FRAMES_SCHEMA)
DETECTIONS = Table("detections", DETECTIONS_SCHEMA)
CLASS_HOURS = Table("class_hours", CLASS_HOURS_SCHEMA)
DAILY_SUMMARY = Table("daily_summary", DAILY_SUMMARY_SCHEMA, daily=True)
TRACKS = Table("tracks", TRACKS_SCHEMA)
OBJECT_COUNTS = Table("object_counts", OBJECT_COUNTS_SCHEMA, part="zones-(?:[0-9a-f]{12}|none)")
ALERTS = Table("alerts", ALERTS_SCHEMA)
TABLES = {t.name: t for t in (FRAMES, DETECTIONS, CLASS_HOURS, DAILY_SUMMARY, TRACKS, OBJECT_COUNTS, ALERTS)}

# The assets that are not warehouse tables. Every asset key is declared here, once: a key mistyped
# where it is used fails at import, where a mistyped string would load as an unrelated external asset.
TOPIC_ASSET = dg.AssetKey("kafka_frames")
LANDING_ASSET = dg.AssetKey("landing_metadata")
REPORT_ASSET = dg.AssetKey("daily_report")
ASSET_KEYS = (TOPIC_ASSET, LANDING_ASSET, *(t.key for t in TABLES.values()), REPORT_ASSET)

# A model's re-detections (`defs/laboratory`): a file per hour and model, in the columns of detections,
# and an asset per model of the registry.
REDETECTIONS = Table("redetections", DETECTIONS_SCHEMA, part="model-[a-z0-9][a-z0-9._-]{0,62}")


def redetections_key(model: str) -> dg.AssetKey:
    return dg.AssetKey(["redetections", model])


def model_key(model: str) -> dg.AssetKey:
    """A model of the registry as a versioned input: its data version is its file's sha256."""
    return dg.AssetKey(["models", model])


def model_op_name(model: str) -> str:
    """The op name Dagster makes of `redetections/MODEL` (`AssetKey.to_python_identifier`, which turns
    `-` and `.` into `_`; that of `models/MODEL` alike): two models whose names give one op name cannot
    load together."""
    return redetections_key(model).to_python_identifier()


def same_op_name(model: str, others) -> str | None:
    """The first of the model names `others` whose op name is `model`'s, `model` itself aside."""
    return next((o for o in others if o != model and model_op_name(o) == model_op_name(model)), None)


# The detections' columns the trackers, counters and alert rules read.
TRACKED_COLUMNS = ["source_id", "frame_id", "captured_at", "detection_index", "track_id", "class_name",
                   "confidence", "x", "y", "w", "h"]


def counts_part(zones_sha256: str | None) -> str:
    """object_counts of an hour counted with one zones file: counts made with an earlier file stay
    beside them, so old and new counts can be compared."""
    return f"zones-{(zones_sha256 or 'none')[:12]}"


def to_parquet(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def from_parquet(data: bytes, columns: list[str] | None = None) -> pa.Table:
    """A Parquet file's table; of `columns` only, when given (the others are not decoded)."""
    return pq.read_table(io.BytesIO(data), columns=columns)
