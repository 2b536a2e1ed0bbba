"""Where the live alerts keep each partition's watches between ranges (`alerts/live/<topic>/<partition>
[-g<generation>].json`: their rules' state and their tracks, written by defs/alerts/live.py), and how the
others read what is in them: the live wall's track ids (defs/alerts/now.py) and MQTT's crossings of the
day (defs/alerts/mqtt_out.py). The live alerts alone write them."""

from __future__ import annotations

import json

from imgpipeline.resources.storage import BadObject, Storage

STATE = "alerts/live"
MAX_READ_BYTES = 64 << 20  # a saved watch larger than this is not read by the others


def state_key(topic: str, partition: int, generation: int = 0) -> str:
    return f"{STATE}/{topic}/{partition}" + (f"-g{generation}" if generation else "") + ".json"


def generation_of(key: str) -> int | None:
    """The generation a saved watch's key names (`<partition>[-g<N>].json`), None for another file."""
    name = key.rsplit("/", 1)[-1].removesuffix(".json")
    generation = name.partition("-g")[2]
    return int(generation) if generation.isdigit() else 0 if "-g" not in name else None


def latest_key(store: Storage, topic: str, partition: int) -> str | None:
    """The saved watch of the partition's latest generation, if there is one."""
    generations = {key: g for key in store.list(f"{STATE}/{topic}/")
                   if (g := generation_of(key)) is not None and key == state_key(topic, partition, g)}
    return max(generations, key=generations.get) if generations else None


def saved_sources(store: Storage, key: str | None) -> dict[str, dict]:
    """The tracks a saved watch holds per source (vision/live_tracks.py's `SourceTracks.to_dict`); none
    when it is missing, damaged or written over as it was read (read again at the next range or look)."""
    try:
        if key is None or not store.exists(key):
            return {}
        sources = json.loads(store.get(key, max_bytes=MAX_READ_BYTES))["tracks"]["sources"]
        return {str(s): tracks for s, tracks in sources.items() if isinstance(tracks, dict)}
    except (BadObject, AttributeError, KeyError, TypeError, ValueError):
        return {}
