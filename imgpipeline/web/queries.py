"""The viewer's and the report's questions to the warehouse, as SQL over its views (one day at a time:
the views of a day's page hold only that day's files). Every value goes in as a parameter."""

from __future__ import annotations

from datetime import date

from imgpipeline.ingest.messages import clip_key
from imgpipeline.resources.storage import BadObject, Storage

PAGE_SIZE = 60
EPOCH = date(1970, 1, 1)


def _rows(con, sql: str, params: list) -> list[dict]:
    relation = con.execute(sql, params)
    names = [d[0] for d in relation.description]
    return [dict(zip(names, row, strict=True)) for row in relation.fetchall()]


def sources(con, day: date) -> list[str]:
    return [r["source_id"] for r in _rows(
        con, "SELECT DISTINCT source_id FROM frames WHERE dt = ? ORDER BY 1", [day])]


def hourly_counts(con, day: date) -> list[dict]:
    """Per source, hour and class: detections and distinct (tracked) objects."""
    return _rows(con, """
        SELECT source_id, CAST(hour AS INTEGER) AS hour, class_name, count(*) AS detections,
               count(DISTINCT track_id) AS unique_objects
        FROM detections WHERE dt = ? GROUP BY ALL ORDER BY source_id, hour, class_name""", [day])


def class_totals(con, day: date) -> list[dict]:
    """Per source and class: the day's detections and distinct objects (a track seen in two hours is one
    object of the day, not two)."""
    return _rows(con, """
        SELECT source_id, class_name, count(*) AS detections, count(DISTINCT track_id) AS unique_objects
        FROM detections WHERE dt = ? GROUP BY ALL ORDER BY source_id, detections DESC, class_name""", [day])


def hourly_crossings(con, day: date, zones_sha256: str | None) -> list[dict]:
    """Per source, hour and line: crossings each way (counted with the zones file in use)."""
    return _rows(con, """
        SELECT source_id, CAST(hour AS INTEGER) AS hour, name AS line, class_name,
               CAST(sum(crossed_in) AS BIGINT) AS crossed_in, CAST(sum(crossed_out) AS BIGINT) AS crossed_out
        FROM object_counts WHERE dt = ? AND kind = 'line' AND zones_sha256 IS NOT DISTINCT FROM ?
        GROUP BY ALL HAVING sum(crossed_in) + sum(crossed_out) > 0
        ORDER BY source_id, hour, line, class_name""", [day, zones_sha256])


def day_totals(con, day: date) -> list[dict]:
    """Per source: frames, detected, dark, errors, shed."""
    return _rows(con, """
        SELECT source_id, count(*) AS frames, count(*) FILTER (WHERE status = 'detected') AS detected,
               count(*) FILTER (WHERE status = 'skipped_dark') AS dark,
               count(*) FILTER (WHERE status = 'error') AS errors,
               count(*) FILTER (WHERE status = 'shed') AS shed,
               min(captured_at) AS first_frame, max(captured_at) AS last_frame
        FROM frames WHERE dt = ? GROUP BY source_id ORDER BY source_id""", [day])


ALERT_COLUMNS = ("number, fired_at, source_id, rule, kind, severity, detail, frame_id, frame_ids, track_id, "
                 "class_name, annotated_key, crop_key, CAST(dt AS VARCHAR) AS day")


def alerts(con, day: date | None = None, source: str | None = None, limit: int = 500) -> list[dict]:
    return with_objects(con, _rows(con, f"""
        SELECT {ALERT_COLUMNS} FROM alerts
        WHERE (CAST(? AS DATE) IS NULL OR dt = CAST(? AS DATE))
          AND (CAST(? AS VARCHAR) IS NULL OR source_id = ?)
        ORDER BY fired_at DESC, number DESC LIMIT ?""", [day, day, source, source, limit]))


def stored_clip(store: Storage, found: dict) -> str | None:
    """The key of the alert's clip when one is stored (made once the frames around the alert are in; a
    photo has none); None too when the row's key would leave the storage root."""
    if not found["annotated_key"]:
        return None
    key = clip_key(found["annotated_key"])
    try:
        return key if store.exists(key) else None
    except BadObject:
        return None


def alert(con, number: int) -> dict | None:
    """One alert by number, on whichever day (without `object`: see `with_objects`)."""
    found = _rows(con, f"SELECT {ALERT_COLUMNS} FROM alerts WHERE number = ? LIMIT 1", [number])
    return found[0] if found else None


# -- objects people can name -----------------------------------------------------------------------
# A track id is the stable key of an object, but it reads as 1795418140549000. People read `person 14`:
# the 14th person its source's tracker confirmed that day (UTC), counted from the stored detections. A
# track id holds the capture time of the frame that confirmed it (milliseconds × 1000), so its day, and
# its order among the day's tracks, come from the id itself.
MS_IDS_PER_DAY = 86_400_000 * 1000


def confirmed_on(track_id: int) -> date:
    return date.fromordinal(EPOCH.toordinal() + track_id // MS_IDS_PER_DAY)


def object_numbers(con, tracks) -> dict[tuple[str, str, int], int]:
    """(source, class, track id) → the object's number among its source's objects of its class confirmed
    the same day, in the order they were confirmed (1, 2, …); none for a day the cursor has no
    detections of."""
    import duckdb

    wanted = {(s, c, int(t)) for s, c, t in tracks if t is not None}
    found = {}
    for day in sorted({confirmed_on(t) for _, _, t in wanted}):
        mine = {w for w in wanted if confirmed_on(w[2]) == day}
        try:
            rows = _rows(con, """
                SELECT source_id, class_name, track_id,
                       row_number() OVER (PARTITION BY source_id, class_name ORDER BY track_id) AS n
                FROM (SELECT DISTINCT source_id, class_name, track_id FROM detections
                      WHERE dt = ? AND source_id IN (SELECT unnest(?)) AND class_name IN (SELECT unnest(?))
                        AND track_id // ? = ?)""",
                         [day, sorted({s for s, _, _ in mine}), sorted({c for _, c, _ in mine}),
                          MS_IDS_PER_DAY, day.toordinal() - EPOCH.toordinal()])
        except duckdb.CatalogException:
            continue  # no detections view in this cursor
        found |= {key: r["n"] for r in rows
                  if (key := (r["source_id"], r["class_name"], r["track_id"])) in mine}
    return found


def with_objects(con, rows: list[dict], source: str | None = None) -> list[dict]:
    """The rows (with `class_name` and `track_id`, and `source_id` unless given) with `object`: `person
    14`, or the raw id where the day's detections are not stored (retention removed them)."""
    keys = [(source or r["source_id"], r["class_name"], r["track_id"]) for r in rows]
    numbers = object_numbers(con, keys)
    for row, (source_id, class_name, track_id) in zip(rows, keys, strict=True):
        row["object"] = None if track_id is None else \
            f"{class_name} {numbers.get((source_id, class_name, int(track_id)), track_id)}"
    return rows


def search_frames(con, day: date, source: str | None = None, start: str | None = None,
                  end: str | None = None, class_name: str | None = None, name: str | None = None,
                  page: int = 0) -> list[dict]:
    """A day's frames by source, time of day (HH:MM, UTC), a class found in them and file name."""
    pattern = None
    if name:
        escaped = name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        pattern = f"%{escaped}%"
    return _rows(con, """
        SELECT source_id, frame_id, file_name, captured_at, status, object_count, width, height
        FROM frames f
        WHERE dt = ? AND (CAST(? AS VARCHAR) IS NULL OR source_id = ?)
          AND (CAST(? AS VARCHAR) IS NULL OR strftime(captured_at, '%H:%M') >= ?)
          AND (CAST(? AS VARCHAR) IS NULL OR strftime(captured_at, '%H:%M') <= ?)
          AND (CAST(? AS VARCHAR) IS NULL OR file_name ILIKE ? ESCAPE '\\')
          AND (CAST(? AS VARCHAR) IS NULL OR EXISTS (
                SELECT 1 FROM detections d WHERE d.dt = ? AND d.source_id = f.source_id
                  AND d.frame_id = f.frame_id AND d.class_name = ?))
        ORDER BY captured_at, source_id, frame_id LIMIT ? OFFSET ?""",
        [day, source, source, start, start, end, end, pattern, pattern, class_name, day, class_name,
         PAGE_SIZE + 1, page * PAGE_SIZE])


def frame(con, day: date, source: str, frame_id: str) -> dict | None:
    found = _rows(con, "SELECT * EXCLUDE (dt, hour) FROM frames WHERE dt = ? AND source_id = ? "
                       "AND frame_id = ? ORDER BY processed_at DESC LIMIT 1", [day, source, frame_id])
    return found[0] if found else None


def frame_detections(con, day: date, source: str, frame_id: str) -> list[dict]:
    return with_objects(con, _rows(con, """
        SELECT detection_index, class_id, class_name, confidence, x, y, w, h, track_id FROM detections
        WHERE dt = ? AND source_id = ? AND frame_id = ? ORDER BY detection_index""", [day, source, frame_id]),
        source)


def classes(con, day: date) -> list[str]:
    return [r["class_name"] for r in _rows(
        con, "SELECT class_name FROM detections WHERE dt = ? GROUP BY 1 ORDER BY count(*) DESC", [day])]


# -- the earlier pipelines' charts ----------------------------------------------------------------

def image_sizes(con, day: date) -> dict:
    """Bytes per image (for a histogram) and the most common dimensions."""
    sizes = [r["bytes"] for r in _rows(con, "SELECT bytes FROM frames WHERE dt = ? AND bytes IS NOT NULL "
                                            "USING SAMPLE 20000 ROWS", [day])]
    dims = _rows(con, """
        SELECT CAST(width AS VARCHAR) || '×' || CAST(height AS VARCHAR) AS size, count(*) AS frames
        FROM frames WHERE dt = ? AND width IS NOT NULL GROUP BY 1 ORDER BY 2 DESC LIMIT 12""", [day])
    return {"bytes": sizes, "dimensions": dims}


def processing_hours(con, day: date) -> list[dict]:
    """Frames processed per hour of the day (UTC), by status."""
    return _rows(con, """
        SELECT CAST(hour(processed_at) AS INTEGER) AS hour, status, count(*) AS frames
        FROM frames WHERE dt = ? AND processed_at IS NOT NULL GROUP BY ALL ORDER BY 1, 2""", [day])


def brightness(con, day: date, points: int = 400) -> list[dict]:
    """Brightness over time per source (the dark filter's input), at most `points` per source."""
    return _rows(con, """
        WITH numbered AS (
            SELECT source_id, captured_at, brightness, status,
                   row_number() OVER (PARTITION BY source_id ORDER BY captured_at) AS n,
                   count(*) OVER (PARTITION BY source_id) AS total
            FROM frames WHERE dt = ? AND brightness IS NOT NULL)
        SELECT source_id, epoch(captured_at) AS seconds, brightness, status FROM numbered
        WHERE n % greatest(1, total // ?) = 0 ORDER BY source_id, seconds""", [day, points])


def operations(con, day: date) -> dict:
    """Frames in (ingested) and processed per minute; per hour the lag (processed − captured, p50 and
    p95), frames, errors (each also dead-lettered with its reason), dark frames and frames shed."""
    per_minute = _rows(con, """
        WITH marks AS (
            SELECT date_trunc('minute', ingested_at) AS minute, 1 AS came, 0 AS done FROM frames
            WHERE dt = ? AND ingested_at IS NOT NULL
            UNION ALL
            SELECT date_trunc('minute', processed_at), 0, 1 FROM frames
            WHERE dt = ? AND processed_at IS NOT NULL)
        SELECT epoch(minute) AS seconds, sum(came) AS came_in, sum(done) AS processed
        FROM marks GROUP BY minute ORDER BY minute""", [day, day])
    per_hour = _rows(con, """
        SELECT CAST(hour AS INTEGER) AS hour, count(*) AS frames,
               quantile_cont(epoch(processed_at) - epoch(captured_at), 0.5) AS lag_p50_s,
               quantile_cont(epoch(processed_at) - epoch(captured_at), 0.95) AS lag_p95_s,
               count(*) FILTER (WHERE status = 'error') AS errors,
               count(*) FILTER (WHERE status = 'skipped_dark') AS dark,
               count(*) FILTER (WHERE status = 'shed') AS shed
        FROM frames WHERE dt = ? GROUP BY ALL ORDER BY hour""", [day])
    return {"per_minute": per_minute, "per_hour": per_hour}
