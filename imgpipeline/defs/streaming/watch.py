"""Watch: what a follow_frames run shows of its work in the Dagster UI, as observations of kafka_frames
(positions and lag per partition, frames/s, latency from the broker to the range accounted for)."""

import time

import dagster as dg

from imgpipeline.defs.tables import TOPIC_ASSET
from imgpipeline.lib.stats import percentile

IDLE_OBSERVE_S = 60.0  # an idle follower's observation of kafka_frames comes this often at most


class Watch:
    """What the follower shows of its work: the frames it read and their latencies (the broker's append to
    their range accounted for: landed, told and committed) since the last observation of kafka_frames,
    which comes every `every_s` while anything moved, else once a minute, and once more at the run's end."""

    def __init__(self, every_s: float):
        self.every_s = every_s
        self.frames, self.latencies = 0, []
        self.at = time.monotonic()
        self.shown: dict | None = None  # the positions and ends last observed
        self.ends: dict[int, int] = {}  # the partitions' ends last looked at

    def landed(self, frames: int, appended_ms: list[int]) -> None:
        """A range of `frames` was accounted for now, of frames the broker appended at `appended_ms`."""
        now = time.time()
        self.frames += frames
        self.latencies.extend(max(0.0, now - ms / 1000) for ms in appended_ms)

    def observation(self, positions: dict[int, int], ends: dict[int, int],
                    final: bool = False) -> dg.AssetObservation | None:
        """The observation due now, if one is; `final`: the run's last, if anything was read since."""
        elapsed = max(time.monotonic() - self.at, 1e-3)
        state = {"positions": dict(positions), "ends": {p: ends.get(p, o) for p, o in positions.items()}}
        self.ends = state["ends"]
        if final and not self.frames:
            return None
        if not final and (elapsed < self.every_s or (state == self.shown and elapsed < IDLE_OBSERVE_S)):
            return None
        lag = {p: max(0, state["ends"][p] - o) for p, o in positions.items()}
        metadata = {"lag": dg.MetadataValue.int(sum(lag.values())),
                    "frames_per_s": dg.MetadataValue.float(round(self.frames / elapsed, 2))}
        for p, offset in sorted(positions.items()):
            metadata[f"lag_partition_{p}"] = dg.MetadataValue.int(lag[p])
            metadata[f"position_partition_{p}"] = dg.MetadataValue.int(offset)
        if self.latencies:
            for name, q in (("landed_p50_s", 0.5), ("landed_p95_s", 0.95)):
                metadata[name] = dg.MetadataValue.float(round(percentile(self.latencies, q), 3))
        self.frames, self.latencies, self.at, self.shown = 0, [], time.monotonic(), state
        return dg.AssetObservation(asset_key=TOPIC_ASSET, metadata=metadata)
