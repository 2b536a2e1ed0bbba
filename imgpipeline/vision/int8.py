"""Precisions proven on this CPU: the INT8 model made here, and the CPU's own precision, each scored
against f32 before `auto` runs it.

NNCF's post-training quantization turns the ONNX model's OpenVINO form into an INT8 one, calibrated
on the first 125 frames of the sample video `bikes.mp4`. It computes its statistics by running the
model on this CPU, so the files it writes may differ from one CPU to another and no checksum can be
published for them. Instead the INT8 model, and the CPU's own precision where it is not f32 (bf16
where the CPU has it), are scored against OpenVINO at f32 on frames held apart from the calibration
(the video's frames 125–249 and the two sample photos), and timed on them (a short probe).
`yolov4-tiny-int8.json` records the figures, the floors they must meet, the files' sha256, the CPU and
the recipe (the ONNX model, the NNCF and OpenVINO releases, the calibration, the layers kept at
floating point, the floors).

The INT8 files run only while their sha256 equal the record's, the record is of this CPU and of
the current recipe, and INT8 passed its floors. The precision `auto` runs the fastest of those that
passed here, else f32. `imgpipeline models fetch` makes the model and the record
(`imgpipeline.cli.quantize`).
"""

from __future__ import annotations

import hashlib
import json
import math
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from imgpipeline import ConfigError
from imgpipeline.vision.model_files import INT8_BIN, INT8_RECORD, INT8_XML, ONNX, expected_sha256

CALIBRATION = range(0, 125)  # frames of bikes.mp4 the statistics are taken from
HELD_APART = range(125, 250)  # its frames the precisions are scored on, with the photos below
PHOTOS = ("bus.jpg", "zidane.jpg")
SCORED_ON = f"bikes.mp4 frames {HELD_APART.start}-{HELD_APART.stop - 1}, {', '.join(PHOTOS)}"
# Agreement with the f32 reference on the held-apart frames a precision must reach to run under `auto`.
# The boxes INT8 and bf16 lose are those f32 scores just above the 0.25 threshold and they just below.
FLOORS = {"matched_share_iou_0.5": 0.93, "matched_share_iou_0.9": 0.85, "confident_missed": 0}
# Layers kept at floating point: the first five convolutions, which see the image's own values, and
# the two heads, whose outputs are the boxes and scores themselves. Quantizing them costs most of the
# agreement and little of the speed.
KEPT = tuple(f"convolutional_{n}/WithoutBiases" for n in (0, 1, 2, 4, 5, 29, 36))
# The CPU flags that decide how OpenVINO runs the model: a record made under other flags is not this CPU's.
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8", "amx_tile")
# 8-bit dot products without VNNI add pairs of products in 16 bits, which can saturate: on such CPUs
# the weights are quantized to 7 bits (NNCF's overflow fix), on others to 8.
VNNI = ("avx512_vnni", "avx_vnni", "amx_int8")
REMAKE = "run `imgpipeline models fetch` to make it again"
# The precisions a record may prove: INT8, and the CPU's own where it is not f32.
PROVEN = ("int8", "bf16", "f16")

_digests: dict[tuple, str] = {}  # the model's sha256 by its files' (path, size, mtime)


def this_cpu() -> dict:
    """The CPU the model runs on, as a record names it: its model name and the flags that matter."""
    name, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not name:
                name = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        import platform

        name = platform.processor()
    return {"model": name, "flags": [f for f in CPU_FLAGS if f in flags]}


def cpu_text(cpu: dict) -> str:
    return f"{cpu.get('model') or 'an unnamed CPU'} ({', '.join(cpu.get('flags') or ['no avx2'])})"


def overflow_fix(cpu: dict) -> str:
    """NNCF's overflow fix for this CPU: `DISABLE` with VNNI, `ENABLE` (7-bit weights) without."""
    return "DISABLE" if set(cpu["flags"]) & set(VNNI) else "ENABLE"


def recipe(folder: Path) -> dict:
    """What the INT8 model is made from and held to: a record of another recipe is made again."""
    def release(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:
            return "missing"

    return {"onnx_sha256": expected_sha256(ONNX, folder),
            "releases": f"nncf {release('nncf')}, openvino {release('openvino')}",
            "calibration": f"bikes.mp4 frames {CALIBRATION.start}-{CALIBRATION.stop - 1}", "kept": list(KEPT),
            "overflow_fix": overflow_fix(this_cpu()), "scored_on": SCORED_ON, "floors": FLOORS}


def model_sha256(folder: Path) -> str:
    """The INT8 model's sha256: of its .xml's bytes followed by its .bin's (`cat xml bin | sha256sum`)."""
    paths = [folder / INT8_XML, folder / INT8_BIN]
    key = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths)
    if key not in _digests:
        digest = hashlib.sha256()
        for path in paths:
            with open(path, "rb") as handle:
                for block in iter(lambda h=handle: h.read(1 << 20), b""):
                    digest.update(block)
        _digests[key] = digest.hexdigest()
    return _digests[key]


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _proven(name, entry) -> bool:
    figures = entry.get("figures") if isinstance(entry, dict) else None
    return (name in PROVEN and isinstance(figures, dict) and isinstance(entry.get("passed"), bool)
            and _strings(entry.get("failures")) and _number(entry.get("fps"))
            and all(_number(figures.get(name)) for name in FLOORS))


def _strings(value) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def read_record(folder: Path) -> dict | None:
    """The record, None when there is none; a ConfigError when it is damaged."""
    path = folder / INT8_RECORD
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise ConfigError(f"{path} is damaged ({error}); {REMAKE}") from None
    if not isinstance(record, dict):
        raise ConfigError(f"{path} is damaged (not a record of precisions proven here); {REMAKE}")
    precisions, cpu = record.get("precisions"), record.get("cpu")
    if not (isinstance(record.get("sha256"), str) and isinstance(cpu, dict) and _strings(cpu.get("flags"))
            and isinstance(cpu.get("model"), str) and isinstance(record.get("recipe"), dict)
            and _number(record.get("f32_fps")) and isinstance(precisions, dict) and "int8" in precisions
            and all(_proven(name, entry) for name, entry in precisions.items())):
        raise ConfigError(f"{path} is damaged (not a record of precisions proven here); {REMAKE}")
    return record


def current(folder: Path) -> dict | None:
    """The record when it is of this CPU and recipe and names the files in `folder`, INT8 passed or
    not; else None (none, a damaged one, another CPU's or recipe's, other files): to be made again."""
    try:
        return _of_this_cpu(folder)
    except ConfigError:
        return None


def _of_this_cpu(folder: Path) -> dict:
    record = read_record(folder)
    if record is None:
        raise ConfigError(f"the INT8 model {folder / INT8_XML} has not been made here; run "
                          "`imgpipeline models fetch` to quantize it and check it against f32")
    if record["cpu"] != this_cpu():
        raise ConfigError(f"the precisions in {folder} were proven on {cpu_text(record['cpu'])}, not this "
                          f"CPU ({cpu_text(this_cpu())}); run `imgpipeline models fetch` to prove them here")
    if record["recipe"] != recipe(folder):
        changed = sorted(k for k, v in recipe(folder).items() if record["recipe"].get(k) != v)
        raise ConfigError(f"the INT8 model in {folder} was made by another recipe ({', '.join(changed)} "
                          f"changed); {REMAKE}")
    for name in (INT8_XML, INT8_BIN):
        if not (folder / name).is_file():
            raise ConfigError(f"model file {folder / name} is missing; {REMAKE}")
    actual = model_sha256(folder)
    if actual != record["sha256"]:
        raise ConfigError(f"the INT8 model in {folder} is not the one its record proved (sha256 "
                          f"{actual[:12]}…, recorded {record['sha256'][:12]}…); delete it and {REMAKE}")
    return record


def verify(folder: Path) -> tuple[Path, str]:
    """The INT8 model's path (its .xml; the .bin beside it) and sha256 once the record proves it on
    this CPU; else a ConfigError that says what to do."""
    record = _of_this_cpu(folder)
    entry = record["precisions"]["int8"]
    if not entry["passed"]:
        failures = "; ".join(entry["failures"])
        raise ConfigError(f"the INT8 model failed its agreement floors on this CPU ({failures}); "
                          "use the precision `auto` or `f32`")
    return folder / INT8_XML, record["sha256"]


def score(reference: list, found: list) -> dict:
    """Agreement with the reference at IoU 0.5 and 0.9, and the floors it misses."""
    from imgpipeline.vision.agreement import LOOSE_IOU, MATCH_IOU, compare

    loose, tight = (compare(reference, found, at_iou=iou).summary() for iou in (LOOSE_IOU, MATCH_IOU))
    figures = {"matched_share_iou_0.5": loose["matched_share"],
               "matched_share_iou_0.9": tight["matched_share"], "confident_missed": loose["confident_missed"]}
    failures = [f"{name} {figures[name]} above its ceiling {floor}" if name == "confident_missed"
                else f"{name} {figures[name]} below its floor {floor}"
                for name, floor in FLOORS.items()
                if (figures[name] > floor if name == "confident_missed" else figures[name] < floor)]
    return {"passed": not failures, "failures": failures, "figures": figures,
            "agreement": {"iou_0.5": loose, "iou_0.9": tight}}


def auto(folder: Path) -> tuple[str, str]:
    """What the precision `auto` runs here and why: the fastest by the record's probe among f32 and the
    precisions that passed their floors on this CPU; f32 when none was proven here."""
    try:
        record = _of_this_cpu(folder)
    except ConfigError as error:
        return "f32", f"nothing faster proven here: {error}"
    passed = {name: entry["fps"] for name, entry in record["precisions"].items() if entry["passed"]}
    fastest = max(passed, key=passed.get, default="f32")
    if fastest == "f32" or passed[fastest] <= record["f32_fps"]:
        failed = [name for name, entry in record["precisions"].items() if not entry["passed"]]
        return "f32", ("the reference" + (f"; {' and '.join(failed)} failed their floors here" if failed
                                          else ": nothing proven here ran faster"))
    others = ", ".join(f"{name} {fps:.0f}" for name, fps in {**passed, "f32": record["f32_fps"]}.items()
                       if name != fastest)
    return fastest, f"the fastest proven on this CPU: {passed[fastest]:.0f} frames/s against {others}"
