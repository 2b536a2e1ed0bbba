"""Charts as inline SVG, drawn on the server: no script, no web fonts, no CDN; the same in a page and in a
self-contained report. Every label is escaped (source ids and class names come from the outside)."""

from __future__ import annotations

from html import escape

from markupsafe import Markup

PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
           "#9c755f", "#bab0ac"]
WIDTH, HEIGHT = 760, 240
LEFT, RIGHT, TOP, BOTTOM = 52, 12, 28, 44


def color(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    magnitude = 10 ** (len(str(int(value))) - 1)
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return value


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 10 or value == int(value) else f"{value:.2g}"


def _frame(title: str, inner: list[str], legend: list[str], label: str) -> Markup:
    legend_items = "".join(
        f'<g transform="translate({LEFT + 130 * i},{HEIGHT - 10})"><rect width="10" height="10" y="-9" '
        f'fill="{color(i)}"/><text x="14" class="legend">{escape(name)}</text></g>'
        for i, name in enumerate(legend[:8]))
    return Markup(
        f'<svg class="chart" role="img" aria-label="{escape(label)}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" xmlns="http://www.w3.org/2000/svg">'
        f'<title>{escape(label)}</title><text x="{LEFT}" y="16" class="title">{escape(title)}</text>'
        + "".join(inner) + legend_items + "</svg>")


def _axis(top: float) -> list[str]:
    plot_h = HEIGHT - TOP - BOTTOM
    parts = []
    for i in range(5):
        value = top * i / 4
        y = TOP + plot_h - plot_h * i / 4
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                     f'<text x="{LEFT - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">'
                     f'{_number(value)}</text>')
    return parts


def empty(title: str, text: str = "no data for this day") -> Markup:
    return _frame(title, [f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" class="none">'
                          f"{escape(text)}</text>"], [], f"{title}: {text}")


def bars(title: str, categories: list[str], series: dict[str, list[float]],
         none: str = "no data for this day") -> Markup:
    """Stacked bars: one bar per category, one colour per series (each a value per category); `none` is
    said when every value is zero."""
    if not categories or not series or not any(v for values in series.values() for v in values):
        return empty(title, none)
    totals = [sum(values[i] for values in series.values()) for i in range(len(categories))]
    top = _nice_max(max(totals))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = plot_w / len(categories)
    inner = _axis(top)
    every = max(1, len(categories) // 24)
    for i, category in enumerate(categories):
        x, base = LEFT + i * step, TOP + plot_h
        for s, (name, values) in enumerate(series.items()):
            if not values[i]:
                continue
            h = plot_h * values[i] / top
            base -= h
            inner.append(f'<rect class="bar" data-series="{escape(name)}" data-category="{escape(category)}" '
                         f'x="{x + step * 0.12:.1f}" y="{base:.1f}" width="{step * 0.76:.1f}" '
                         f'height="{h:.1f}" fill="{color(s)}"><title>{escape(name)} {escape(category)}: '
                         f'{_number(values[i])}</title></rect>')
        if i % every == 0:
            inner.append(f'<text x="{x + step / 2:.1f}" y="{TOP + plot_h + 14}" class="tick" '
                         f'text-anchor="middle">{escape(category)}</text>')
    return _frame(title, inner, list(series), f"{title}: {', '.join(series)}")


def histogram(title: str, values: list[float], bins: int = 20, unit: str = "") -> Markup:
    """Counts of values in equal-width bins."""
    if not values:
        return empty(title)
    low, high = min(values), max(values)
    width = (high - low) / bins or 1.0
    counts = [0] * bins
    for value in values:
        counts[min(bins - 1, int((value - low) / width))] += 1
    labels = [f"{_number(low + width * i)}{unit}" for i in range(bins)]
    return bars(title, labels, {"frames": counts})


def lines(title: str, series: dict[str, list[tuple[float, float]]], x_range: tuple[float, float],
          x_labels: list[tuple[float, str]], threshold: tuple[float, str] | None = None) -> Markup:
    """One polyline per series over x_range; an optional dashed horizontal threshold with its label."""
    points = [y for values in series.values() for _, y in values]
    if not points:
        return empty(title)
    top = _nice_max(max(points + ([threshold[0]] if threshold else [])))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    span = (x_range[1] - x_range[0]) or 1.0

    def xy(x, y):
        return f"{LEFT + plot_w * (x - x_range[0]) / span:.1f},{TOP + plot_h - plot_h * y / top:.1f}"

    inner = _axis(top)
    for x, label in x_labels:
        inner.append(f'<text x="{xy(x, 0).split(",")[0]}" y="{TOP + plot_h + 14}" class="tick" '
                     f'text-anchor="middle">{escape(label)}</text>')
    if threshold:
        y = TOP + plot_h - plot_h * threshold[0] / top
        inner.append(f'<line class="threshold" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
                     f'<text x="{WIDTH - RIGHT}" y="{y - 4:.1f}" class="tick" text-anchor="end">'
                     f'{escape(threshold[1])}</text>')
    for s, (name, values) in enumerate(series.items()):
        path = " ".join(xy(x, y) for x, y in values)
        inner.append(f'<polyline class="line" data-series="{escape(name)}" fill="none" stroke="{color(s)}" '
                     f'stroke-width="1.5" points="{path}"><title>{escape(name)}</title></polyline>')
    return _frame(title, inner, list(series), f"{title}: {', '.join(series)}")
