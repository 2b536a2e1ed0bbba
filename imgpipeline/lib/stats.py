"""Small figures over measured values, the same wherever they are printed or served."""

from __future__ import annotations


def percentile(values: list[float], q: float) -> float:
    """The q-quantile of the values (0 ≤ q ≤ 1), the nearest of them by rank; the values must not be empty."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]
