"""A Hadoop-streaming-style daily summary (`mapper | sort | reducer`), as the older pipelines
ran it on EMR: the baseline `imgpipeline bench summary` times DuckDB against.

    python -m imgpipeline.cli.bench.mapreduce map < detections.csv | LC_ALL=C sort \
        | python -m imgpipeline.cli.bench.mapreduce reduce

Input CSV columns: day, source_id, class_name, confidence, hour. Output, one line per
day × source × class: key, objects, mean confidence, max confidence, 24 hourly counts.
"""

from __future__ import annotations

import sys


def mapper(lines, out) -> None:
    next(lines, None)  # header
    for line in lines:
        day, source, class_name, confidence, hour = line.rstrip("\n").split(",")
        out.write(f"{day}|{source}|{class_name}\t{confidence}\t{hour}\n")


def reducer(lines, out) -> None:
    key, count, total, best, hours = None, 0, 0.0, 0.0, [0] * 24

    def emit():
        out.write(f"{key}\t{count}\t{total / count!r}\t{best!r}\t{' '.join(map(str, hours))}\n")

    for line in lines:
        this, confidence, hour = line.rstrip("\n").split("\t")
        if this != key:
            if key is not None:
                emit()
            key, count, total, best, hours = this, 0, 0.0, 0.0, [0] * 24
        value = float(confidence)
        count += 1
        total += value
        best = max(best, value)
        hours[int(hour)] += 1
    if key is not None:
        emit()


if __name__ == "__main__":
    step = sys.argv[1] if len(sys.argv) > 1 else ""
    if step not in ("map", "reduce"):
        sys.exit("usage: python -m imgpipeline.cli.bench.mapreduce map|reduce")
    (mapper if step == "map" else reducer)(iter(sys.stdin), sys.stdout)
