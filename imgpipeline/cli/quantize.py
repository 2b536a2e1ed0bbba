"""Making the INT8 model (`imgpipeline models fetch`): quantized on the calibration frames, scored
against f32 on frames held apart from them, its speed probed, its files and record written
(`imgpipeline.vision.int8` says what the record proves and how it is checked)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from imgpipeline import ConfigError
from imgpipeline.durable import durable_temp, fsync_folder
from imgpipeline.environment import cache_dir, keep_newest
from imgpipeline.vision import int8
from imgpipeline.vision.int8 import CALIBRATION, HELD_APART, KEPT, PHOTOS, SCORED_ON
from imgpipeline.vision.model_files import INT8_BIN, INT8_RECORD, INT8_XML, ONNX, file_sha256


def frames(numbers: range, photos: tuple[str, ...] = ()) -> list:
    """Decoded frames of bikes.mp4 by number (as the producer sends them: JPEG), then the photos."""
    from imgpipeline.cli.samples import sample
    from imgpipeline.ingest.sources import video_frames
    from imgpipeline.vision.quality import decode_image

    video = [f for f in video_frames(str(sample("bikes.mp4")), "int8") if not isinstance(f, Exception)]
    if len(video) < numbers.stop:
        raise ConfigError(f"bikes.mp4 has {len(video)} frames, fewer than the {numbers.stop} the INT8 model "
                          "is calibrated and scored on; delete the samples cache and fetch it again")
    photographed = [decode_image(sample(name).read_bytes()) for name in photos]
    return [decode_image(video[n].data) for n in numbers] + photographed


def quantize(onnx: Path, input_size: int, calibration: list, overflow_fix: str):
    """The ONNX model's OpenVINO form, quantized to INT8 by NNCF on the calibration frames
    (`overflow_fix`: NNCF's, by name)."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    from imgpipeline.vision.darknet import INPUT
    from imgpipeline.vision.detector import blob
    from imgpipeline.vision.engines.openvino import import_openvino

    nncf.set_log_level(logging.ERROR)
    model = import_openvino().Core().read_model(str(onnx))
    model.reshape({INPUT: [1, 3, input_size, input_size]})
    return nncf.quantize(
        model, nncf.Dataset(calibration, lambda image: blob(image, input_size)),
        preset=nncf.QuantizationPreset.MIXED, subset_size=len(calibration),
        ignored_scope=nncf.IgnoredScope(names=list(KEPT)),
        # The extremes seen, not quantiles: a clipped activation moves boxes more than a coarser step.
        advanced_parameters=AdvancedQuantizationParameters(
            activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX,
            overflow_fix=getattr(nncf.OverflowFix, overflow_fix)))


def timed(pool, images: list) -> tuple[list, float]:
    """A pool's detections of the images (threads as a run uses them) and its frames/s."""
    with ThreadPoolExecutor(max_workers=pool.size) as threads:
        started = time.perf_counter()
        found = list(threads.map(pool.detect, images))
        return found, len(images) / (time.perf_counter() - started)


Maker = Callable[[Path, Path, int, Callable[[str], None]], dict]


def make(folder: Path, input_size: int = 416, log: Callable[[str], None] = print, maker: Maker | None = None
         ) -> dict:
    """Quantize the verified ONNX model in `folder`, prove it and the CPU's own precision against f32,
    and write the INT8 files and their record (the record last: files it does not name never run).
    One process at a time makes them: another that was making them when this one started leaves its
    record, which is taken as it is. `maker` writes the files into a scratch folder and gives their
    record (`_made`, quantizing and scoring, unless another is given)."""
    with open(folder / ".int8.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if record := int8.current(folder):
            log(f"INT8 model made by another process meanwhile: {folder / INT8_XML}")
            return record
        _sweep_scratch(folder)
        with tempfile.TemporaryDirectory(dir=folder, prefix=f".int8.{os.getpid()}.") as scratch:
            record = _cached(folder, Path(scratch), log) or (maker or _made)(
                folder, Path(scratch), input_size, log)
            for name in (INT8_XML, INT8_BIN):
                os.chmod(Path(scratch) / name, 0o644)  # read by the user runs run as, not only the maker
                (Path(scratch) / name).replace(folder / name)
        with tempfile.TemporaryFile() as text:
            text.write(json.dumps(record, indent=1).encode())
            text.seek(0)
            written = durable_temp(folder / INT8_RECORD, text)
        os.chmod(written, 0o644)  # readable by the user runs run as before it is the record
        os.replace(written, folder / INT8_RECORD)
        fsync_folder(folder)
        keep(folder, record, log)
    for name, entry in record["precisions"].items():
        figures = entry["figures"]
        log(f"{name} {'passed' if entry['passed'] else 'FAILED'} its floors: "
            f"{figures['matched_share_iou_0.5']:.1%} of f32's boxes at IoU ≥ 0.5, "
            f"{figures['matched_share_iou_0.9']:.1%} at ≥ 0.9, {figures['confident_missed']} of confidence "
            f"≥ 0.5 lost; {entry['fps']:.0f} frames/s against {record['f32_fps']:.0f} at f32")
    precision, why = int8.auto(folder)
    log(f"the precision `auto` runs {precision} on {int8.cpu_text(record['cpu'])}: {why}")
    return record


# A copy into the cache older than this was killed mid-way: swept by the next.
STALE_COPY_S = 600
# The models the cache keeps, the latest made (older code, releases or CPUs made the others).
KEPT_MODELS = 3


def cache_folder(folder: Path) -> Path:
    """Where this machine keeps the INT8 model and record made from the ONNX model in `folder`: keyed by
    the recipe (the ONNX model's sha256, NNCF's and OpenVINO's releases, the calibration, the floors),
    the CPU and the code that makes and scores it (this module's and `vision/int8.py`), so a new
    checkout or models folder on the same machine (a second clone, CI's) takes it instead of quantizing
    and scoring again, and a change to any of them makes it anew."""
    code = [file_sha256(Path(module.__file__)) for module in (sys.modules[__name__], int8)]
    key = json.dumps({"recipe": int8.recipe(folder), "cpu": int8.this_cpu(), "code": code}, sort_keys=True)
    return cache_dir() / "int8" / hashlib.sha256(key.encode()).hexdigest()[:24]


def _cached(folder: Path, scratch: Path, log) -> dict | None:
    """The cached model's files copied into `scratch` and its record, when it is whole (None: none kept,
    or its files are not the ones its record proved: made again)."""
    cached = cache_folder(folder)
    try:
        record = int8.read_record(cached)
        for name in (INT8_XML, INT8_BIN):
            shutil.copyfile(cached / name, scratch / name)
    except (ConfigError, OSError):
        return None
    if record is None or int8.model_sha256(scratch) != record["sha256"]:
        shutil.rmtree(cached, ignore_errors=True)  # damaged: this make keeps its own instead
        return None
    log(f"INT8 model made on this machine before by the same recipe, taken from {cached}")
    return record


def keep(folder: Path, record: dict, log=print) -> None:
    """The model and its record copied to the machine's cache (once; what cannot be written there is said
    and fails nothing), which keeps the KEPT_MODELS made last."""
    cached = cache_folder(folder)
    if cached.exists():
        return
    temp = None
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        for left in cached.parent.glob(".making.*"):  # by copies killed mid-way (one takes a second)
            if time.time() - left.stat().st_mtime > STALE_COPY_S:
                shutil.rmtree(left, ignore_errors=True)
        temp = Path(tempfile.mkdtemp(dir=cached.parent, prefix=".making."))
        for name in (INT8_XML, INT8_BIN, INT8_RECORD):
            shutil.copyfile(folder / name, temp / name)
        os.rename(temp, cached)  # whole or not there; another make's copy stands
        keep_newest(cached.parent, KEPT_MODELS, keeping=cached)
    except OSError as error:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
        if not cached.exists():
            log(f"the INT8 model is not kept in {cached.parent} ({error}); the next checkout makes it again")


def _made(folder: Path, scratch: Path, input_size: int, log) -> dict:
    """The INT8 model quantized into `scratch` and its record, the precisions scored and timed."""
    import nncf

    from imgpipeline.vision.engines.openvino import import_openvino

    log(f"quantizing {ONNX} to INT8 (NNCF {nncf.__version__}) on bikes.mp4 frames "
        f"{CALIBRATION.start}–{CALIBRATION.stop - 1}")
    started = time.perf_counter()
    cpu = int8.this_cpu()
    quantized = quantize(folder / ONNX, input_size, frames(CALIBRATION), int8.overflow_fix(cpu))
    import_openvino().save_model(quantized, str(scratch / INT8_XML), compress_to_fp16=False)
    made_s = time.perf_counter() - started
    digest = int8.model_sha256(scratch)
    return {"model": INT8_XML, "sha256": digest,
            "files": {name: file_sha256(scratch / name) for name in (INT8_XML, INT8_BIN)},
            "cpu": cpu, "recipe": int8.recipe(folder), "made_s": round(made_s, 1),
            **_scored(folder, scratch / INT8_XML, digest, input_size, log)}


def _scored(folder: Path, draft: Path, digest: str, input_size: int, log) -> dict:
    """The drafted INT8 model's and the CPU's own precision's agreement with f32 on the held-apart
    frames, against the floors, and the probe: frames/s of each over those frames, as a run's pool
    detects."""
    from imgpipeline.resources import DetectorResource
    from imgpipeline.vision import engines, models
    from imgpipeline.vision.detector import DetectorPool
    from imgpipeline.vision.engines import Model

    def pool(precision: str):
        return DetectorResource(engine="openvino", precision=precision, models_dir=str(folder),
                                input_size=input_size).load_pool()

    held = frames(HELD_APART, PHOTOS)
    log(f"scoring it against f32 on {len(held)} frames held apart from the calibration ({SCORED_ON})")
    reference, f32_fps = timed(pool("f32"), held)
    own = pool("default")
    def verified(name: str) -> tuple[Path, str]:
        return (draft, digest) if name == INT8_XML else (folder / name, file_sha256(folder / name))

    model = Model(models.get(models.DEFAULT, folder), input_size, 0.25, 0.45, None, verified)
    pools = {"int8": DetectorPool(engines.get("openvino").detectors(model, own.size, 0, "int8"))}
    if own.identity.precision != "f32":
        pools[own.identity.precision] = own
    precisions = {}
    for name, candidate in pools.items():
        found, fps = timed(candidate, held)
        precisions[name] = {**int8.score(reference, found), "fps": round(fps, 1)}
    return {"reference": "openvino f32", "frames": len(held), "workers": own.size,
            "f32_fps": round(f32_fps, 1), "default_is": own.identity.precision, "precisions": precisions}


def _sweep_scratch(folder: Path) -> None:
    """Remove what makes that were killed left (held under the lock, nothing else is making one): their
    scratch folders and a record's temp file."""
    for scratch in folder.glob(".int8.*.*"):
        shutil.rmtree(scratch, ignore_errors=True)
    for temp in folder.glob(f".{INT8_RECORD}.*.tmp"):
        temp.unlink(missing_ok=True)


