"""The lakehouse spike behind docs/lakehouse.md: DuckLake (its catalog in SQLite, or in PostgreSQL with
SPIKE_PG set) against Apache Iceberg (pyiceberg with its SQL catalog on SQLite), on the warehouse's criteria:
an hour's frames, detections and class_hours replaced atomically while a reader reads them; two writers of
different hours at once; snapshots, their expiry, compaction and file cleanup; a second reader; the daily
summary's query over ten million detections. It is a measurement, not part of the package: it needs
packages the package does not (docs/lakehouse.md#running-the-spike) and prints one JSON object of figures.

    python docs/lakehouse_spike.py ROOT [--s3 http://HOST:PORT] [--only ducklake|iceberg] [--speed]

With --s3 the data goes to the bucket `spike` of that endpoint (keys local / local-secret, as the local S3
endpoint of `imgpipeline services up` has them; the bucket must exist); the catalogs stay under ROOT.
"""

from __future__ import annotations

import glob
import json
import multiprocessing as mp
import os
import sys
import time
from datetime import UTC, datetime, timedelta

import duckdb
import pyarrow as pa

SITE = os.path.dirname(duckdb.__path__[0])
HOUR0 = datetime(2026, 11, 30, 0, tzinfo=UTC)
PER_HOUR = 36_000  # detections of an hour: 7,200 frames at 2 frames/s, 5 objects each
CLASSES = [f"c{i}" for i in range(7)]
S3 = {"key": "local", "secret": "local-secret", "bucket": "spike"}


def ext(name: str) -> str:
    return glob.glob(f"{SITE}/duckdb_extension_{name}/extensions/v{duckdb.__version__}/*.duckdb_extension")[0]


def hour_tables(hour: datetime, gen: int) -> dict[str, pa.Table]:
    """An hour's three tables at generation `gen`: gen + PER_HOUR detections, so a reader can tell a mix."""
    n = PER_HOUR + gen
    classes = [CLASSES[i % 7] for i in range(n)]
    frames = pa.table({"hour": [hour] * (n // 5 + 1), "frame_id": [f"f{i}" for i in range(n // 5 + 1)],
                       "gen": [gen] * (n // 5 + 1)})
    detections = pa.table({"hour": [hour] * n, "frame_id": [f"f{i // 5}" for i in range(n)],
                           "class": classes, "confidence": [0.5 + (i % 50) / 100 for i in range(n)],
                           "gen": [gen] * n})
    counts = {c: classes.count(c) for c in CLASSES}
    class_hours = pa.table({"hour": [hour] * 7, "class": CLASSES, "n": [counts[c] for c in CLASSES],
                            "gen": [gen] * 7})
    return {"frames": frames, "detections": detections, "class_hours": class_hours}


# --- DuckLake ---------------------------------------------------------------------------------------------

PG = os.environ.get("SPIKE_PG")  # e.g. "host=127.0.0.1 port=55432 user=lake dbname=lake": DuckLake's catalog there


def lake(root: str, s3: str | None) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    for name in ("postgres_scanner" if PG else "sqlite_scanner", "ducklake") + (("httpfs",) if s3 else ()):
        con.load_extension(ext(name))
    data = f"s3://{S3['bucket']}/lake/" if s3 else f"{root}/lake/data/"
    if s3:
        con.execute(f"CREATE SECRET (TYPE s3, KEY_ID '{S3['key']}', SECRET '{S3['secret']}', "
                    f"ENDPOINT '{s3.split('://')[1]}', URL_STYLE 'path', USE_SSL false, REGION 'us-east-1')")
    os.makedirs(f"{root}/lake", exist_ok=True)
    catalog = f"postgres:{PG}" if PG else f"sqlite:{root}/lake/catalog.sqlite"
    con.execute(f"ATTACH 'ducklake:{catalog}' AS lake (DATA_PATH '{data}')")
    con.execute("USE lake")
    return con


def lake_create(root, s3):
    con = lake(root, s3)
    for name, table in hour_tables(HOUR0, 0).items():
        con.register("t", table.slice(0, 0))
        con.execute(f"CREATE TABLE IF NOT EXISTS {name} AS FROM t")
        con.execute(f"ALTER TABLE {name} SET PARTITIONED BY (hour)")


def lake_replace(con, hour: datetime, gen: int) -> int:
    """Replace the hour in all three tables in one transaction; retried on a conflict. Returns retries."""
    tables = hour_tables(hour, gen)
    for attempt in range(50):
        try:
            con.execute("BEGIN")
            for name, table in tables.items():
                con.register("t", table)
                con.execute(f"DELETE FROM {name} WHERE hour = ?", [hour])
                con.execute(f"INSERT INTO {name} FROM t")
            con.execute("COMMIT")
            return attempt
        except duckdb.Error:
            try:
                con.execute("ROLLBACK")
            except duckdb.Error:
                pass  # the failed commit ended the transaction
            time.sleep(0.01 * (attempt + 1))
    raise RuntimeError("gave up")


def lake_read(con, hour):
    con.execute("BEGIN")
    try:
        return (con.execute("SELECT count(*), min(gen), max(gen) FROM detections WHERE hour = ?", [hour]).fetchone(),
                con.execute("SELECT sum(n), min(gen), max(gen) FROM class_hours WHERE hour = ?", [hour]).fetchone(),
                con.execute("SELECT count(*), min(gen), max(gen) FROM frames WHERE hour = ?", [hour]).fetchone())
    finally:
        con.execute("COMMIT")


# --- Iceberg ----------------------------------------------------------------------------------------------

def ice(root: str, s3: str | None):
    from pyiceberg.catalog.sql import SqlCatalog
    os.makedirs(f"{root}/ice", exist_ok=True)
    props = {"uri": f"sqlite:///{root}/ice/catalog.sqlite",
             "warehouse": f"s3://{S3['bucket']}/ice" if s3 else f"file://{root}/ice/data"}
    if s3:
        props |= {"s3.endpoint": s3, "s3.access-key-id": S3["key"], "s3.secret-access-key": S3["secret"],
                  "s3.region": "us-east-1"}
    return SqlCatalog("spike", **props)


def ice_create(root, s3):
    from pyiceberg.transforms import IdentityTransform
    cat = ice(root, s3)
    cat.create_namespace_if_not_exists("wh")
    for name, table in hour_tables(HOUR0, 0).items():
        if not cat.table_exists(f"wh.{name}"):
            t = cat.create_table(f"wh.{name}", schema=table.schema)
            with t.update_spec() as spec:
                spec.add_field("hour", IdentityTransform(), "hour")


def ice_replace(cat, hour, gen) -> int:
    """Replace the hour table by table (pyiceberg commits one table at a time); retried on a conflict."""
    from pyiceberg.exceptions import CommitFailedException
    from pyiceberg.expressions import EqualTo
    retries = 0
    for name, table in hour_tables(hour, gen).items():
        for _ in range(50):
            try:
                cat.load_table(f"wh.{name}").overwrite(table, overwrite_filter=EqualTo("hour", hour.isoformat()))
                break
            except CommitFailedException:
                retries += 1
                time.sleep(0.01 * retries)
    return retries


def ice_read(cat, hour):
    from pyiceberg.expressions import EqualTo
    out = []
    for name, col in (("detections", None), ("class_hours", "n"), ("frames", None)):
        t = cat.load_table(f"wh.{name}").scan(row_filter=EqualTo("hour", hour.isoformat())).to_arrow()
        gens = t.column("gen").to_pylist()
        total = sum(t.column(col).to_pylist()) if col else t.num_rows
        out.append((total, min(gens, default=None), max(gens, default=None)))
    return out


# --- the criteria -----------------------------------------------------------------------------------------

FORMATS = {"ducklake": (lake, lake_create, lake_replace, lake_read),
           "iceberg": (ice, ice_create, ice_replace, ice_read)}


def writer(fmt, root, s3, hour, gens, out):
    open_, _, replace, _ = FORMATS[fmt]
    handle = open_(root, s3)
    started, retries = time.perf_counter(), 0
    for gen in gens:
        retries += replace(handle, hour, gen)
    out.put({"seconds": time.perf_counter() - started, "retries": retries, "replaces": len(gens)})


def reader(fmt, root, s3, hour, stop, out):
    open_, _, _, read = FORMATS[fmt]
    handle = open_(root, s3)
    reads = mixes = 0
    while not stop.is_set():
        (dn, dlo, dhi), (cn, clo, chi), (fn, flo, fhi) = read(handle, hour)
        reads += 1
        gens = {dlo, dhi, clo, chi, flo, fhi}
        if len(gens) > 1 or dn != cn:
            mixes += 1
    out.put({"reads": reads, "mixed": mixes})


def atomic(fmt, root, s3, replaces=20):
    """One writer replaces an hour `replaces` times while a reader reads it: reads that saw two generations."""
    hour = HOUR0 + timedelta(hours=1)
    open_, _, replace, _ = FORMATS[fmt]
    replace(open_(root, s3), hour, 1)
    ctx = mp.get_context("spawn")
    out, stop = ctx.Queue(), ctx.Event()
    r = ctx.Process(target=reader, args=(fmt, root, s3, hour, stop, out))
    w = ctx.Process(target=writer, args=(fmt, root, s3, hour, range(2, 2 + replaces), out))
    r.start()
    w.start()
    w.join()
    wrote = out.get()
    stop.set()
    r.join()
    read = out.get()
    return {"ms_per_hour_replaced": round(1000 * wrote["seconds"] / replaces), **read}


def side_by_side(fmt, root, s3, replaces=10):
    """Two writers replacing different hours at once: retries, time, and every hour right at the end."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    hours = [HOUR0 + timedelta(hours=10 + i) for i in range(2)]
    procs = [ctx.Process(target=writer, args=(fmt, root, s3, h, range(1, 1 + replaces), out)) for h in hours]
    started = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    results = [out.get() for _ in procs]
    open_, _, _, read = FORMATS[fmt]
    handle = open_(root, s3)
    right = all(list(read(handle, h)) == [(PER_HOUR + replaces, replaces, replaces),
                                    (PER_HOUR + replaces, replaces, replaces),
                                    ((PER_HOUR + replaces) // 5 + 1, replaces, replaces)] for h in hours)
    return {"seconds": round(time.perf_counter() - started, 2), "retries": sum(r["retries"] for r in results),
            "every_hour_right": right}


def files_under(root, s3, fmt):
    if not s3:
        return sum(len(f) for _, _, f in os.walk(f"{root}/{'lake/data' if fmt == 'ducklake' else 'ice/data'}"))
    import boto3
    client = boto3.client("s3", endpoint_url=s3, aws_access_key_id=S3["key"], aws_secret_access_key=S3["secret"],
                          region_name="us-east-1")
    prefix = "lake/" if fmt == "ducklake" else "ice/"
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=S3["bucket"], Prefix=prefix)
    return sum(len(p.get("Contents", [])) for p in pages)


def lake_upkeep(root, s3):
    """Time travel, then expiry, file cleanup and compaction, all by DuckLake's own functions."""
    con = lake(root, s3)
    hour = HOUR0 + timedelta(hours=1)
    snaps = con.execute("SELECT snapshot_id FROM lake.snapshots() ORDER BY snapshot_id").fetchall()
    back = snaps[len(snaps) // 2][0]
    then = con.execute(f"SELECT max(gen) FROM detections AT (VERSION => {back}) WHERE hour = ?", [hour]).fetchone()[0]
    before = files_under(root, s3, "ducklake")
    con.execute("CALL ducklake_merge_adjacent_files('lake')")
    con.execute("CALL ducklake_expire_snapshots('lake', older_than => now() + INTERVAL 1 second)")
    con.execute("CALL ducklake_cleanup_old_files('lake', cleanup_all => true)")
    after = files_under(root, s3, "ducklake")
    left = con.execute("SELECT count(*) FROM lake.snapshots()").fetchone()[0]
    return {"snapshots": len(snaps), "time_travel_gen": then, "files_before": before, "files_after": after,
            "snapshots_left": left, "compaction": "ducklake_merge_adjacent_files",
            "cleanup": "ducklake_cleanup_old_files"}


def ice_upkeep(root, s3):
    cat = ice(root, s3)
    from pyiceberg.expressions import EqualTo
    t = cat.load_table("wh.detections")
    snaps = t.snapshots()
    # An overwrite commits two snapshots, a delete and then an append: travel to an append.
    appends = [s for s in snaps if s.summary.operation.value == "append"]
    back = appends[len(appends) // 2].snapshot_id
    then = max(t.scan(row_filter=EqualTo("hour", (HOUR0 + timedelta(hours=1)).isoformat()),
                      snapshot_id=back).to_arrow().column("gen").to_pylist())
    before = files_under(root, s3, "iceberg")
    for name in ("frames", "detections", "class_hours"):
        table = cat.load_table(f"wh.{name}")
        table.maintenance.expire_snapshots().older_than(datetime.now(UTC) + timedelta(seconds=1)).commit()
    after = files_under(root, s3, "iceberg")
    return {"snapshots": len(snaps), "time_travel_gen": then, "files_before": before, "files_after": after,
            "snapshots_left": len(cat.load_table("wh.detections").snapshots()),
            "compaction": "none in pyiceberg 0.12 (Spark's rewrite_data_files)", "cleanup": "expire only"}


def second_readers(fmt, root, s3):
    """Another DuckDB client reads the table through the format, and polars where the format allows."""
    out = {}
    con = duckdb.connect()
    if fmt == "ducklake":
        con.close()
        other = lake(root, s3)  # a fresh DuckDB client attaching the same catalog
        out["duckdb"] = other.execute("SELECT count(*) FROM detections").fetchone()[0]
        listed = other.execute("SELECT data_file FROM ducklake_list_files('lake', 'detections')").fetchall()
        files = [r[0] for r in listed]
        if not s3:
            import polars as pl
            out["polars_parquet_of_listed_files"] = pl.scan_parquet(files).select(pl.len()).collect().item()
    else:
        for name in ("avro", "iceberg") + (("httpfs",) if s3 else ()):
            con.load_extension(ext(name))
        if s3:
            con.execute(f"CREATE SECRET (TYPE s3, KEY_ID '{S3['key']}', SECRET '{S3['secret']}', "
                        f"ENDPOINT '{s3.split('://')[1]}', URL_STYLE 'path', USE_SSL false, REGION 'us-east-1')")
        meta = ice(root, s3).load_table("wh.detections").metadata_location
        out["duckdb_iceberg_scan"] = con.execute(f"SELECT count(*) FROM iceberg_scan('{meta}')").fetchone()[0]
        if not s3:
            import polars as pl
            out["polars_scan_iceberg"] = pl.scan_iceberg(meta).select(pl.len()).collect().item()
    return out


def parquet_speed(root, hours=280):
    """The same rows as one Parquet file per hour (today's layout), read by DuckDB: the baseline."""
    import pyarrow.parquet as pq
    os.makedirs(f"{root}/parquet", exist_ok=True)
    started = time.perf_counter()
    for h in range(hours):
        table = hour_tables(HOUR0 + timedelta(hours=100 + h), 0)["detections"]
        pq.write_table(table, f"{root}/parquet/{h}.parquet")
    wrote = time.perf_counter() - started
    q = ("SELECT date_trunc('day', hour) d, class, count(*), avg(confidence) "
         f"FROM read_parquet('{root}/parquet/*.parquet') GROUP BY ALL")
    return {"rows": hours * PER_HOUR, "write_s": round(wrote, 1), "summary_s": timed(duckdb.connect(), q)}


def timed(con, q):
    """The query's warm median of 3, after one run."""
    con.execute(q).fetchall()
    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        con.execute(q).fetchall()
        runs.append(time.perf_counter() - t0)
    return round(sorted(runs)[1], 3)


def summary_speed(fmt, root, hours=280):
    """`hours` hours (~10 million detections) written once, then a daily summary's query timed."""
    open_, create, _, _ = FORMATS[fmt]
    create(root, None)
    handle = open_(root, None)
    started = time.perf_counter()
    if fmt == "ducklake":
        handle.execute("CREATE TABLE big AS FROM detections LIMIT 0")
        for h in range(hours):
            handle.register("t", hour_tables(HOUR0 + timedelta(hours=100 + h), 0)["detections"])
            handle.execute("INSERT INTO big FROM t")
        wrote = time.perf_counter() - started
        q = "SELECT date_trunc('day', hour) d, class, count(*), avg(confidence) FROM big GROUP BY ALL"
        took = timed(handle, q)
    else:
        t = handle.create_table("wh.big", schema=hour_tables(HOUR0, 0)["detections"].schema)
        for h in range(hours):
            t.append(hour_tables(HOUR0 + timedelta(hours=100 + h), 0)["detections"])
        wrote = time.perf_counter() - started
        con = duckdb.connect()
        for name in ("avro", "iceberg"):
            con.load_extension(ext(name))
        meta = handle.load_table("wh.big").metadata_location
        q = (f"SELECT date_trunc('day', hour) d, class, count(*), avg(confidence) FROM iceberg_scan('{meta}') "
             "GROUP BY ALL")
        took = timed(con, q)
    return {"rows": hours * PER_HOUR, "write_s": round(wrote, 1), "summary_s": round(took, 3)}


def main():
    root, s3 = sys.argv[1], (sys.argv[sys.argv.index("--s3") + 1] if "--s3" in sys.argv else None)
    only = sys.argv[sys.argv.index("--only") + 1].split(",") if "--only" in sys.argv else list(FORMATS)
    figures = {}
    for fmt in only:
        FORMATS[fmt][1](root, s3)
        f = figures[fmt] = {}
        f["atomic"] = atomic(fmt, root, s3)
        f["side_by_side"] = side_by_side(fmt, root, s3)
        f["second_readers"] = second_readers(fmt, root, s3)
        f["upkeep"] = (lake_upkeep if fmt == "ducklake" else ice_upkeep)(root, s3)
        if "--speed" in sys.argv and not s3:
            f["summary"] = summary_speed(fmt, root + "/speed")
        print(json.dumps({fmt: f}), flush=True)
    if "--speed" in sys.argv and not s3:
        figures["parquet"] = {"summary": parquet_speed(root + "/speed")}
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
