"""Making the INT8 model (`imgpipeline models fetch`): quantized on the calibration frames, scored
against f32 on frames held apart from them, its speed probed, its files and record written
(`imgpipeline.vision.int8` says what the record proves and how it is checked)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from imgpipeline import ConfigError
from imgpipeline.paths import replace_durably
from imgpipeline.services.process import alive
from imgpipeline.vision import int8
from imgpipeline.vision.int8 import CALIBRATION, FLOORS, HELD_APART, PHOTOS, SCORED_ON
from imgpipeline.vision.model_files import INT8_BIN, INT8_RECORD, INT8_XML, ONNX, file_sha256

# Layers kept at floating point: the first five convolutions, which see the image's own values, and
# the two heads, whose outputs are the boxes and scores themselves. Quantizing them costs most of the
# agreement and little of the speed.
KEPT = tuple(f"convolutional_{n}/WithoutBiases" for n in (0, 1, 2, 4, 5, 29, 36))


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


def quantize(onnx: Path, input_size: int, calibration: list):
    """The ONNX model's OpenVINO form, quantized to INT8 by NNCF on the calibration frames."""
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
            activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX))


def _timed(pool, images: list) -> tuple[list, float]:
    """A pool's detections of the images (threads as a run uses them) and its frames/s."""
    with ThreadPoolExecutor(max_workers=pool.size) as threads:
        started = time.perf_counter()
        found = list(threads.map(pool.detect, images))
        return found, len(images) / (time.perf_counter() - started)


def make(folder: Path, input_size: int = 416, log: Callable[[str], None] = print) -> dict:
    """Quantize the verified ONNX model in `folder`, score it and probe its speed, and write the INT8
    files and their record (the record last: files without a matching record are never run)."""
    import nncf

    from imgpipeline.vision.engines.openvino import import_openvino

    _sweep_scratch(folder)
    log(f"quantizing {ONNX} to INT8 (NNCF {nncf.__version__}) on bikes.mp4 frames "
        f"{CALIBRATION.start}–{CALIBRATION.stop - 1}")
    started = time.perf_counter()
    quantized = quantize(folder / ONNX, input_size, frames(CALIBRATION))
    with tempfile.TemporaryDirectory(dir=folder, prefix=f".int8.{os.getpid()}.") as scratch:
        draft = Path(scratch) / INT8_XML
        import_openvino().save_model(quantized, str(draft), compress_to_fp16=False)
        sums = {name: file_sha256(Path(scratch) / name) for name in (INT8_XML, INT8_BIN)}
        record = {"model": INT8_XML, "files": sums, "cpu": int8.this_cpu(),
                  "made_by": f"nncf {nncf.__version__}, openvino {import_openvino().__version__}",
                  "made_s": round(time.perf_counter() - started, 1),
                  "calibration": f"bikes.mp4 frames {CALIBRATION.start}-{CALIBRATION.stop - 1}",
                  **_scored(folder, draft, sums[INT8_XML], input_size, log)}
        for name in (INT8_XML, INT8_BIN):
            (Path(scratch) / name).replace(folder / name)
    with tempfile.TemporaryFile() as text:
        text.write(json.dumps(record, indent=1).encode())
        text.seek(0)
        replace_durably(folder / INT8_RECORD, text)
    figures, fps, own = record["figures"], record["probe"]["fps"], record["probe"]["default_is"]
    log(f"INT8 model {'passed' if record['passed'] else 'FAILED'} its floors: "
        f"{figures['matched_share_iou_0.5']:.1%} of f32's boxes at IoU ≥ 0.5, "
        f"{figures['matched_share_iou_0.9']:.1%} at ≥ 0.9, {figures['confident_missed']} of confidence "
        f"≥ 0.5 lost; {fps['int8']:.0f} frames/s against {fps[own]:.0f} at {own} and {fps['f32']:.0f} at "
        f"f32 on {int8.cpu_text(record['cpu'])}")
    return record


def _scored(folder: Path, draft: Path, digest: str, input_size: int, log) -> dict:
    """The drafted INT8 model's agreement with f32 on the held-apart frames, its floors, and the probe:
    frames/s of f32, the CPU's own precision and INT8 over those frames, as a run's pool detects."""
    from imgpipeline.resources import DetectorResource
    from imgpipeline.vision import engines
    from imgpipeline.vision.detector import DetectorPool
    from imgpipeline.vision.engines import Model

    def pool(precision: str):
        return DetectorResource(engine="openvino", precision=precision, models_dir=str(folder),
                                input_size=input_size).load_pool()

    held = frames(HELD_APART, PHOTOS)
    log(f"scoring it against f32 on {len(held)} frames held apart from the calibration ({SCORED_ON})")
    reference, f32_fps = _timed(pool("f32"), held)
    own = pool("default")
    _, own_fps = _timed(own, held)
    model = Model(folder, input_size, 0.25, 0.45, None, lambda name: (draft, digest))
    candidate = DetectorPool(engines.get("openvino").detectors(model, own.size, 0, "int8"))
    found, int8_fps = _timed(candidate, held)
    scored = int8.score(reference, found)
    return {"passed": not scored["failures"], "failures": scored["failures"], "floors": FLOORS,
            "figures": scored["figures"], "scored_on": SCORED_ON, "reference": "openvino f32",
            "probe": {"frames": len(held), "workers": candidate.size, "default_is": own.identity.precision,
                      "fps": {"f32": round(f32_fps, 1), own.identity.precision: round(own_fps, 1),
                              "int8": round(int8_fps, 1)}},
            "agreement": {"iou_0.5": scored["iou_0.5"], "iou_0.9": scored["iou_0.9"]}}


def _sweep_scratch(folder: Path) -> None:
    """Remove the scratch folders of makes that were killed (their process is gone)."""
    for scratch in folder.glob(".int8.*.*"):
        pid = scratch.name.split(".")[2]
        if pid.isdigit() and not alive(int(pid)):
            shutil.rmtree(scratch, ignore_errors=True)


