"""The zones file: hostile and mistaken files fail at load with a message saying what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from imgpipeline import ConfigError
from imgpipeline.resources import TrackingResource
from imgpipeline.vision import zones

GOOD = b"""
sources:
  cam:
    units: fraction
    lines: [{name: door, start: [0.5, 0], end: [0.5, 1]}]
    zones: [{name: bench, polygon: [[0, 0], [0.3, 0], [0.3, 0.3]]}]
"""


@pytest.mark.parametrize(("text", "says"), [
    (b"sources: [unclosed", "not valid YAML at line 1"),
    (b"a: &a [1, 1, 1, 1]\nb: &b [*a, *a, *a, *a]\nc: [*b, *b, *b, *b]\n", "aliases (*name) are not allowed"),
    (b"- just\n- a list\n", "expected a mapping with `sources:`, got list"),
    (b"sources:\n  cam:\n    lnes: []\n", "sources.cam.lnes: Extra inputs are not permitted"),
    (b"sources:\n  cam:\n    lines: [{name: a, start: [1, 1], end: [1, 1]}]\n",
     "start and end are the same point"),
    (b"sources:\n  cam:\n    zones: [{name: z, polygon: [[0, 0], [1, 1]]}]\n", "at least 3 items"),
    (b"sources:\n  cam:\n    units: fraction\n    lines: [{name: a, start: [0, 0], end: [2, 1]}]\n",
     "point (2, 1) is outside 0…1; with units fraction"),
    (b"sources:\n  cam:\n    zones: [{name: z, polygon: [[0, 0], [1e9, 0], [0, 1e9]]}]\n",
     "outside 0…20000; with units pixels"),
    (b"sources:\n  cam:\n    lines: [{name: a, start: [0, 0], end: [1, 1]}]\n    zones: [{name: a, polygon: "
     b"[[0, 0], [1, 0], [0, 1]]}]\n", "repeated: a"),
    (b"sources:\n  cam:\n    lines: [{name: a, start: [0, 0, 0], end: [1, 1]}]\n", "(a point is [x, y])"),
    (b"sources:\n  cam:\n    lines: [{name: a, start: [0, 0], end: [1, 1], min_frames: 0}]\n",
     "min_frames: Input should be greater than or equal to 1"),
    (b"sources:\n  cam:\n    units: miles\n", "sources.cam.units: Input should be 'pixels' or 'fraction'"),
    (b"\xff\xfe not text", "not UTF-8 text"),
    (b"[" * 50_000, "nested more than 12 deep at line 1"),
    (b"? [1, 2]\n: x\n", "a key must be a plain name or number"),
    (b"sources:\n  cam:\n    units: fraction\n  cam:\n    lines: []\n", "'cam' is written twice"),
])
def test_a_bad_zones_file_says_where_and_what(text, says):
    with pytest.raises(ConfigError) as error:
        zones.parse(text, "zones.yaml")
    assert says in str(error.value) and str(error.value).startswith("zones.yaml")


def test_a_good_file_loads_with_its_sha256_and_resolves_fractions_per_frame_size(tmp_path):
    path = tmp_path / "zones.yaml"
    path.write_bytes(GOOD)
    loaded = zones.load(path)
    import hashlib

    assert loaded.sha256 == hashlib.sha256(GOOD).hexdigest()
    lines, areas = loaded.geometry("cam", 640, 480)
    assert (lines["door"].vector.start.x, lines["door"].vector.end.y) == (320, 480)
    assert areas["bench"].polygon.max(axis=0).tolist() == [192, 144]
    assert loaded.geometry("other", 640, 480) == ({}, {})
    assert loaded.geometry("cam", 0, None) == ({}, {})  # a frame of unknown size counts on no line


def test_a_zone_far_outside_the_frame_costs_no_more_than_the_frame():
    huge = zones.parse(b"sources:\n  cam:\n    zones: [{name: z, polygon: [[0, 0], [20000, 0], "
                       b"[20000, 20000]]}]\n")
    _, areas = huge.geometry("cam", 640, 480)
    assert areas["z"].mask.shape == (482, 642)


def test_a_huge_file_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "zones.yaml"
    path.write_bytes(b"#" * (zones.MAX_FILE_BYTES + 1))
    with pytest.raises(ConfigError, match="more than 1000000 bytes"):
        zones.load(path)
    with pytest.raises(ConfigError, match="more than 1000000 bytes"):
        zones.load(Path("/dev/zero"))  # endless: read no further than the limit


def test_the_resource_fails_at_load_naming_the_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("IMGPIPELINE_ZONES_FILE", str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="IMGPIPELINE_ZONES_FILE=.*missing.yaml: no such file"):
        TrackingResource.from_env()
    bad = tmp_path / "zones.yaml"
    bad.write_bytes(b"sources:\n  cam:\n    lines: [{name: a}]\n")
    monkeypatch.setenv("IMGPIPELINE_ZONES_FILE", str(bad))
    with pytest.raises(ConfigError, match=r"sources.cam.lines.0.start: Field required"):
        TrackingResource.from_env()
    monkeypatch.setenv("IMGPIPELINE_TRACK_MIN_FRAMES", "0")
    monkeypatch.delenv("IMGPIPELINE_ZONES_FILE")
    with pytest.raises(ConfigError, match="IMGPIPELINE_TRACK_MIN_FRAMES='0'"):
        TrackingResource.from_env()


def test_the_zones_file_is_the_project_homes_else_the_checkouts_unless_none(monkeypatch, tmp_path):
    from imgpipeline.paths import PACKAGE_DIR

    monkeypatch.setenv("IMGPIPELINE_HOME", str(tmp_path))
    monkeypatch.delenv("IMGPIPELINE_ZONES_FILE", raising=False)
    shipped = TrackingResource.from_env().zones()
    assert shipped.path == str(PACKAGE_DIR.parent / "zones.yaml")
    assert [line.name for line in shipped.of("street-cam").lines] == ["west", "east"]
    (tmp_path / "zones.yaml").write_bytes(GOOD)
    assert TrackingResource.from_env().zones().of("cam").lines[0].name == "door"
    monkeypatch.setenv("IMGPIPELINE_ZONES_FILE", "none")
    assert TrackingResource.from_env().zones().sha256 is None
