"""`quantize.make` in a process of its own with a maker that quantizes nothing: it writes the INT8 files
that `models fetch` made once in SOURCE (the checkout's, by `.ci/run`) into the scratch folder, says it
is scoring, and waits there until GATE exists. The lock, the scratch, its sweep and the record written
last are the real ones; the kill and concurrency tests time their faults by what it says instead of by
NNCF's minutes.

    python -m imgpipeline_tests.int8_maker FOLDER SOURCE GATE
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from imgpipeline.cli import quantize
from imgpipeline.vision.model_files import INT8_BIN, INT8_RECORD, INT8_XML


def gated(source: Path, gate: Path):
    def maker(folder: Path, scratch: Path, input_size: int, log) -> dict:
        log("quantizing: the checkout's INT8 files copied")
        for name in (INT8_XML, INT8_BIN):
            shutil.copyfile(source / name, scratch / name)
        log("scoring it against f32: waiting for the gate")
        while not gate.exists():  # a test's gate: killed here, or let through
            time.sleep(0.05)
        return json.loads((source / INT8_RECORD).read_text())

    return maker


def main(folder: str, source: str, gate: str) -> None:
    print("making", flush=True)
    said = lambda line: print(line, flush=True)  # noqa: E731
    quantize.make(Path(folder), log=said, maker=gated(Path(source), Path(gate)))


if __name__ == "__main__":
    main(*sys.argv[1:])
