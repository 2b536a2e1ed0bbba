"""Tracking and counting as a resource: the tracker and its settings, and the lines and zones file."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import field_validator, model_validator

from imgpipeline import ConfigError
from imgpipeline.paths import project_file
from imgpipeline.resources.settings import FromEnv, one_of, setting
from imgpipeline.vision import zones
from imgpipeline.vision.tracking import TRACKERS, TrackerSettings

DEFAULT_ZONES_FILE = "zones.yaml"


class TrackingResource(FromEnv, dg.ConfigurableResource):
    """How detections become tracks (SORT by default), and where lines and zones are counted."""

    zones_file: str = setting(
        "IMGPIPELINE_ZONES_FILE",
        "",
        "lines and zones counted per source (YAML; docs/tracking.md); `none`: no lines or "
        "zones; unset: `zones.yaml` in the project home, else the checkout's (the demo's lines)",
        shown="`zones.yaml`",
    )
    tracker: str = setting(
        "IMGPIPELINE_TRACKER",
        "sort",
        "the tracker (Roboflow's `trackers`): `sort` (the best on ground truth: docs/tracking.md), "
        "`bytetrack` (a few hundredths behind it), `botsort` (without camera-motion compensation) or "
        "`ocsort`. Changed, it tracks the hours built from then on: backfill a range to track it again",
    )
    lost_s: float = setting(
        "IMGPIPELINE_TRACK_LOST_S",
        1.0,
        "seconds a track may go unseen and still continue (capture time, whatever the frame rate)",
        gt=0,
        le=600,
    )
    minimum_frames: int = setting(
        "IMGPIPELINE_TRACK_MIN_FRAMES",
        3,
        "consecutive detections before a track is confirmed; unconfirmed detections are never counted",
        ge=1,
        le=100,
    )
    activation: float = setting(
        "IMGPIPELINE_TRACK_ACTIVATION",
        0.5,
        "confidence a detection needs to start a track (weaker ones only continue tracks)",
        ge=0,
        le=1,
    )

    @field_validator("tracker", mode="before")
    @classmethod
    def _known_tracker(cls, value):
        value = value.strip().lower() if isinstance(value, str) else value
        return one_of(cls, "tracker", value, list(TRACKERS))

    @model_validator(mode="after")
    def _zones_readable(self):
        try:
            self.zones()
        except ConfigError as exc:
            raise ValueError(f"{exc}") from None
        return self

    def zones_path(self) -> Path | None:
        """The zones file in use (the configured one must exist); None when there is none."""
        return project_file(self.zones_file, DEFAULT_ZONES_FILE)

    def zones(self) -> zones.Zones:
        path = self.zones_path()
        if path is None:
            return zones.no_zones()
        if not path.exists():
            raise ConfigError(
                f"IMGPIPELINE_ZONES_FILE={self.zones_file}: no such file; "
                "write one (see docs/tracking.md) or unset it"
            )
        return zones.load(path)

    def settings(self) -> TrackerSettings:
        # Only a detection at `activation` or more starts a track; a weaker one continues one (SORT matches
        # every detection; ByteTrack and BoT-SORT take weaker ones in their second stage).
        return TrackerSettings(kind=self.tracker, lost_s=self.lost_s, minimum_frames=self.minimum_frames,
                               activation=self.activation, high_confidence=self.activation)

    def preload(self) -> None:
        """Import the trackers and supervision (with SciPy: ~0.6 s) ahead of the tracking and alerts runs
        forked from this process, which would each import them again."""
        import supervision  # noqa: F401
        import trackers  # noqa: F401
