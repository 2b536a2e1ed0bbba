"""The model's files in `models/`: the Darknet cfg, the class names, the weights and their ONNX form,
checked by sha256 against `models/SHA256SUMS`; and the INT8 form made here, checked against its record
(`imgpipeline.vision.int8`)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from imgpipeline import ConfigError
from imgpipeline.environment import models_dir

WEIGHTS = "yolov4-tiny.weights"
CFG = "yolov4-tiny.cfg"
NAMES = "coco.names"
ONNX = "yolov4-tiny.onnx"  # written by `imgpipeline models fetch` from the verified weights
# The INT8 form in OpenVINO's format, quantized by `imgpipeline models fetch`, and its record.
INT8_XML = "yolov4-tiny-int8.xml"
INT8_BIN = "yolov4-tiny-int8.bin"
INT8_RECORD = "yolov4-tiny-int8.json"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def expected_sha256(name: str, folder: Path | None = None) -> str:
    sums = (folder or models_dir()) / "SHA256SUMS"
    for line in sums.read_text().splitlines():
        digest, _, filename = line.strip().partition("  ")
        if filename == name:
            return digest
    raise ConfigError(f"{sums} has no checksum for {name}")


def verify_weights(folder: Path | None = None) -> Path:
    """The weights path, once its sha256 matches; else a ConfigError that says what to do."""
    return verify(WEIGHTS, folder)


def verify(name: str, folder: Path | None = None, *, digest: str | None = None) -> Path:
    """A model file's path once its sha256 (`digest`, if already computed) matches SHA256SUMS (the INT8
    model, made here, is checked against its record instead: `imgpipeline.vision.int8.verify`)."""
    folder = folder or models_dir()
    path = folder / name
    if not path.is_file():
        raise ConfigError(f"model file {path} is missing; run `imgpipeline models fetch` to get it")
    actual, expected = digest or file_sha256(path), expected_sha256(name, folder)
    if actual != expected:
        raise ConfigError(
            f"model file {path} is corrupt (sha256 {actual[:12]}…, expected {expected[:12]}…); "
            "delete the file and run `imgpipeline models fetch` again"
        )
    return path
