"""Inference engines for the YOLO model: each turns a blob into the heads' raw tensors.

`opencv` runs the Darknet files in OpenCV DNN (the reference); `onnxruntime` and `openvino` run
the ONNX form written by `imgpipeline models fetch`. An engine's sessions are made in the
process that uses them: thread pools started before a `fork` do not exist in the child.

`noop` runs nothing and finds nothing: it exists to measure orchestration (`imgpipeline bench
scale`), never for real detection.

Each engine is one module of this package that defines an `Engine` and registers it with
`@register`; importing the package imports every module in it. A new engine, or a new model
format, is one new module: the detector resource finds it by its name, and its settings are
checked against the registered engines and the precisions they accept.
"""

from __future__ import annotations

import importlib
import pkgutil

from imgpipeline.vision.engines.base import Engine, Model, Network, Sessions

__all__ = ["REGISTRY", "Engine", "Model", "Network", "Sessions", "get", "names", "precisions", "register",
           "taking"]

# The registered engines by name, one instance each (engines hold no state).
REGISTRY: dict[str, Engine] = {}


def register(engine: type[Engine]) -> type[Engine]:
    """Make an engine selectable by its name (the detector's engine setting); a class decorator."""
    name = getattr(engine, "name", "")
    if not name or name != name.strip().lower():
        raise ValueError(f"{engine.__qualname__}: an engine's name is a lowercase word the setting "
                         f"selects it by, not {name!r}")
    if name in REGISTRY:
        raise ValueError(f"{engine.__qualname__}: the name {name!r} is taken by "
                         f"{type(REGISTRY[name]).__qualname__}")
    if "default" not in engine.precisions:
        raise ValueError(f"{engine.__qualname__}: every engine accepts the precision `default`")
    REGISTRY[name] = engine()
    return engine


def names() -> tuple[str, ...]:
    """The registered engines' names: the reference first, the engines that detect nothing last."""
    return tuple(sorted(REGISTRY, key=lambda name: REGISTRY[name].order))


def get(name: str) -> Engine:
    """The engine registered as `name` (a name from `names()`)."""
    return REGISTRY[name]


def precisions() -> tuple[str, ...]:
    """Every precision some engine accepts: `auto` (which every engine accepts), then `default`."""
    return tuple(dict.fromkeys(("auto", *(p for name in names() for p in REGISTRY[name].precisions))))


def taking(precision: str) -> list[str]:
    """The engines offered that accept `precision`, in listing order."""
    return [name for name in names() if REGISTRY[name].listed
            and (precision == "auto" or precision in REGISTRY[name].precisions)]


# Each engine module registers itself when imported; the runtimes they run on are imported only
# when an engine is used.
for _module in pkgutil.iter_modules(__path__, f"{__name__}."):
    importlib.import_module(_module.name)
