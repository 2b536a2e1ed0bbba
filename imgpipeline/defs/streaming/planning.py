"""Pure planning of frames_sensor's ticks: which offset ranges to launch now, and the next cursor.

The cursor holds the next offset per partition. A partition's pending range is launched
when it reaches `max_batch` frames or when its oldest pending offset has waited
`max_wait_s`; a backlog is split into `max_batch` ranges, or, when the partition's free runs
cannot take it so, evenly over those runs up to `max_backlog_batch` each. Small batches when
traffic is light (latency), large ones under backlog (throughput, and runs per hour that stop
growing with the frame rate).

Partitions are the unit of parallelism. Each has at most `runs_per_partition` runs queued or
running, counted by the run tag PARTITION_TAG (run_queries.py): a busy partition cannot fill the run
queue ahead of a quiet one, and the queue (first in, first out, with a limit per partition value of
that tag in dagster.yaml) starts them side by side up to its own limit. A tick's requests alternate
between partitions.

With the fast lane on, the cursor follows the follow_frames runs instead (`follow_plan`).
"""

from dataclasses import dataclass, field

from imgpipeline.defs.streaming.batch_policy import BatchPolicy
from imgpipeline.defs.streaming.offsets import Offsets


@dataclass
class Plan:
    ranges: list[tuple[int, int, int]] = field(default_factory=list)  # partition, start, end
    cursor: dict = field(default_factory=dict)
    gaps: list[str] = field(default_factory=list)


def plan_ranges(cursor: dict, ends: dict[int, int], beginnings: dict[int, int], now: float,
                policy: BatchPolicy, budgets: dict[int, int], room: int | None = None,
                claimed: dict[int, tuple[int, int]] | None = None) -> Plan:
    """Pure planning: which offset ranges to launch now, and the next cursor.

    cursor: {"partitions": {"0": {"next": 12, "since": 1700000000.0, "served": 1700000000.0}}, "gaps": 0}
    budgets: runs each partition may still launch (absent: none); `room`: runs all of them may still
    launch together (None: no such limit), shared one at a time among the partitions ready to launch
    (a full batch pending, or waited long enough), those served longest ago first. The ranges come out
    alternating between partitions (each one's first, then each one's second …), the order the queue
    starts them. `claimed`: per partition, a range a follow_frames run claimed from its next offset and
    did not account for; it goes first with those ends (the landing files the run may have written are
    rewritten, not doubled), and nothing else of the partition before it.
    """
    claimed = claimed or {}
    partitions = {p: dict(v) for p, v in cursor.get("partitions", {}).items()}
    plan = Plan(cursor={**cursor, "partitions": partitions, "gaps": cursor.get("gaps", 0)})
    for partition in sorted(ends):
        state = partitions.setdefault(str(partition), {"next": beginnings[partition], "since": None})
        if state["next"] < beginnings[partition]:
            lost = beginnings[partition] - state["next"]
            plan.gaps.append(
                f"partition {partition}: offsets {state['next']}..{beginnings[partition] - 1} were "
                f"deleted by retention before processing ({lost} messages skipped)"
            )
            plan.cursor["gaps"] += lost
            state["next"], state["since"] = beginnings[partition], None
    if room is not None:
        wanting = [p for p in ends if p in claimed or ready(partitions[str(p)], ends[p], now, policy)]
        budgets = share_runs(budgets, room, sorted(
            wanting, key=lambda p: (partitions[str(p)].get("served", 0.0), p)))
    for partition in sorted(ends):
        plan_partition(plan, partition, ends[partition], now, policy, budgets.get(partition, 0),
                       claimed.get(partition))
    if room is not None:
        for partition in {r[0] for r in plan.ranges}:
            partitions[str(partition)]["served"] = now
    nth: dict[int, int] = {}
    ranked = []
    for r in plan.ranges:
        nth[r[0]] = nth.get(r[0], -1) + 1
        ranked.append((nth[r[0]], r))
    plan.ranges = [r for _, r in sorted(ranked)]
    return plan


def plan_partition(plan: Plan, partition: int, end: int, now: float, policy: BatchPolicy, budget: int,
                   claim: tuple[int, int] | None = None) -> None:
    """A partition's ranges for the plan, up to `budget`, its claimed range first (with its own ends
    though retention deleted its first offsets: the run reads those as a gap)."""
    state = plan.cursor["partitions"][str(partition)]
    if claim is not None and claim[0] <= state["next"] < claim[1] <= end:
        if budget <= 0:
            return  # the claimed range goes first, once the partition may launch a run
        plan.ranges.append((partition, *claim))
        state["next"], state["since"] = claim[1], None
        budget -= 1
    pending = end - state["next"]
    batch = policy.batch_for(pending, budget)
    grown = batch > policy.max_batch  # the backlog split evenly: the last run takes what is left
    while budget > 0 and (pending >= batch or (grown and pending > 0)):
        size = min(batch, pending)
        plan.ranges.append((partition, state["next"], state["next"] + size))
        state["next"] += size
        pending -= size
        budget -= 1
        state["since"] = None
    if pending <= 0:
        state["since"] = None
        return
    if state["since"] is None:
        state["since"] = now
    if now - state["since"] >= policy.max_wait_s and budget > 0:
        plan.ranges.append((partition, state["next"], end))
        state["next"], state["since"] = end, None


def ready(state: dict, end: int, now: float, policy: BatchPolicy) -> bool:
    """Whether a partition would launch a run now: a full batch pending, or its oldest pending offset
    waited `max_wait_s` (a partition first seen pending now has waited 0 s)."""
    pending = end - state["next"]
    since = state["since"] if state.get("since") is not None else now
    return pending > 0 and (pending >= policy.max_batch or now - since >= policy.max_wait_s)


def share_runs(budgets: dict[int, int], room: int, wanting: list[int]) -> dict[int, int]:
    """Pure: `room` runs shared among the `wanting` partitions in their order, one each per round, none
    past its own budget."""
    shared = dict.fromkeys(budgets, 0)
    while room > 0:
        takers = [p for p in wanting if shared.get(p, 0) < budgets.get(p, 0)][:room]
        if not takers:
            break
        for partition in takers:
            shared[partition] += 1
        room -= len(takers)
    return shared


def follow_plan(cursor: dict, offsets: Offsets, following: bool, positions: dict[int, int]) -> Plan:
    """Pure: with the fast lane, each partition's next offset is where the follow_frames runs accounted for
    every offset, as the consumer group's commit or the runs' `positions` say; no ranges. Off again
    (`following` False), the cursor takes that once, for ranges to be planned from there."""
    partitions = {p: dict(v) for p, v in cursor.get("partitions", {}).items()}
    for partition in sorted(offsets.ends):
        state = partitions.setdefault(str(partition), {"next": offsets.beginnings[partition], "since": None})
        reached = max(offsets.committed.get(partition) or 0, positions.get(partition, 0))
        if reached > state["next"]:  # past the log's end: the next tick's reset check says so
            state["next"], state["since"] = reached, None
    plan = Plan(cursor={**cursor, "partitions": partitions, "gaps": cursor.get("gaps", 0)})
    plan.cursor.pop("followed", None)
    if following:
        plan.cursor["followed"] = True
    return plan
