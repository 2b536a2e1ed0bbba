"""Alert rule kinds: what each kind of rule in alerts.yaml fires on, evaluated by the one evaluator
(`vision/evaluator.py`) for the hourly `alerts` asset, the live lane, backtests and comparisons alike.

Each kind is one module of this package that defines a `Kind` and registers it with `@register`;
importing the package imports every module in it. There are three families, by what a rule looks at:
a frame by itself or with the frames before it (`FrameKind`: class, count, dark, frozen), the time
between a source's frames (`SilenceKind`: silent), and what tracks did on a line or in a zone
(`TrackKind`: line_cross, zone_enter, dwell). A new kind is one module here and its schema in
`vision/alert_rules.py`; the evaluator asks the registry, never a kind's name.
"""

from __future__ import annotations

import importlib
import pkgutil

from imgpipeline.vision.rules.base import FrameKind, Kind, SilenceKind, Step, TrackKind

__all__ = ["FRAME_KINDS", "REGISTRY", "TRACK_KINDS", "FrameKind", "Kind", "SilenceKind", "Step", "TrackKind",
           "kind_of", "register"]

REGISTRY: dict[str, Kind] = {}  # the registered kinds by name, one instance each (kinds hold no state)


def register(kind: type[Kind]) -> type[Kind]:
    """Make a rule kind known by its name (a rule's `kind:`); a class decorator."""
    if not kind.name or kind.name in REGISTRY:
        raise ValueError(f"{kind.__qualname__}: a kind needs a name of its own, not {kind.name!r}")
    REGISTRY[kind.name] = kind()
    return kind


def kind_of(rule) -> Kind:
    """The registered kind of a rule."""
    return REGISTRY[rule.kind]


for _module in pkgutil.iter_modules(__path__, f"{__name__}."):
    if _module.name != f"{__name__}.base":
        importlib.import_module(_module.name)

# The kinds of each family, by name.
FRAME_KINDS = tuple(sorted(name for name, kind in REGISTRY.items() if isinstance(kind, FrameKind)))
TRACK_KINDS = tuple(sorted(name for name, kind in REGISTRY.items() if isinstance(kind, TrackKind)))
