"""Small matplotlib figures rendered with the Agg canvas (no pyplot, no global backend
switch, no display) and returned as inline `<img>` tags with base64 PNG data."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ttpa_ray.report.html import Markup, png_img

FIGSIZE = (6.0, 3.5)
DPI = 100
STATUS_COLORS = {
    "done": "#2da44e",
    "skipped": "#8c959f",
    "failed": "#cf222e",
    "running": "#d4a72c",
}
# fixed colours per model so every plot uses the same one for the same model
MODEL_COLORS = {"sft": "#4C72B0", "dpo_response": "#DD8452", "ttpa": "#55A868", "grpo": "#2CA6A4"}
_CYCLE = ["#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C", "#CCB974", "#64B5CD"]


def color_for(name: str, i: int = 0) -> str:
    return MODEL_COLORS.get(name, _CYCLE[i % len(_CYCLE)])


def new_figure(ncols: int = 1, figsize: tuple[float, float] = FIGSIZE) -> tuple[Figure, Any]:
    fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def to_img(fig: Figure, alt: str) -> Markup:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return png_img(buf.getvalue(), alt)


def stage_seconds(
    names: Sequence[str], seconds: Sequence[float], statuses: Sequence[str]
) -> Markup:
    fig, (ax,) = new_figure(figsize=(6.0, max(2.0, 0.35 * len(names) + 1.0)))
    y = np.arange(len(names))
    ax.barh(y, seconds, color=[STATUS_COLORS.get(s, "#4C72B0") for s in statuses])
    ax.set_yticks(y, labels=list(names))
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.set_title("stage wall time (colour: status)")
    for yi, s in zip(y, seconds, strict=True):
        ax.text(s, yi, f" {s:.1f}s", va="center", fontsize=8)
    ax.margins(x=0.15)
    return to_img(fig, "bar chart of wall-clock seconds per pipeline stage")


def loss_curves(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]]) -> Markup:
    fig, (ax,) = new_figure()
    for i, (name, (steps, loss)) in enumerate(curves.items()):
        ax.plot(steps, loss, label=name, color=color_for(name, i), lw=1.4)
    ax.set(xlabel="optimizer step", ylabel="loss", title="training loss per step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return to_img(fig, "line plot of training loss per optimizer step for " + ", ".join(curves))


def reward_curves(
    acc: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    margin: Mapping[str, tuple[Sequence[float], Sequence[float]]],
) -> Markup:
    fig, (a1, a2) = new_figure(ncols=2, figsize=(8.0, 3.5))
    for i, (name, (steps, vals)) in enumerate(acc.items()):
        a1.plot(steps, vals, label=name, color=color_for(name, i), lw=1.4)
    for i, (name, (steps, vals)) in enumerate(margin.items()):
        a2.plot(steps, vals, label=name, color=color_for(name, i), lw=1.4)
    a1.set(xlabel="optimizer step", ylabel="reward accuracy", title="DPO reward accuracy")
    a1.set_ylim(-0.05, 1.05)
    a2.set(xlabel="optimizer step", ylabel="chosen − rejected", title="DPO reward margin")
    for a in (a1, a2):
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    models = ", ".join(sorted(set(acc) | set(margin)))
    return to_img(fig, f"line plots of DPO reward accuracy and reward margin per step for {models}")


def step_panels(
    panels: Sequence[tuple[str, str, Mapping[str, tuple[Sequence[float], Sequence[float]]]]],
    alt: str,
) -> Markup:
    """Line plots side by side, one per `(title, ylabel, {label: (steps, values)})`, over
    the optimizer step (a legend when a panel has more than one line)."""
    fig, axes = new_figure(ncols=len(panels), figsize=(4.0 * len(panels), 3.5))
    for ax, (title, ylabel, series) in zip(axes, panels, strict=True):
        for i, (name, (steps, vals)) in enumerate(series.items()):
            ax.plot(steps, vals, label=name, color=color_for(name, i), lw=1.4)
        ax.set(xlabel="optimizer step", ylabel=ylabel, title=title)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=8)
    return to_img(fig, alt)


def histograms(
    groups: Mapping[str, Sequence[float]],
    *,
    title: str,
    xlabel: str,
    alt: str,
    bins: Any = 20,
    range_: tuple[float, float] | None = None,
    integer: bool = False,
) -> Markup:
    """Overlaid step histograms, one per group (same bins for all)."""
    fig, (ax,) = new_figure()
    values = [np.asarray(v, dtype=float) for v in groups.values()]
    allv = np.concatenate(values) if values else np.array([0.0])
    if integer and range_ is None:
        lo, hi = (int(allv.min()), int(allv.max())) if allv.size else (0, 1)
        width = max(1, int(np.ceil((hi - lo + 1) / 40)))
        bins = np.arange(lo - 0.5, hi + width + 0.5, width)
    for i, (name, v) in enumerate(zip(groups, values, strict=True)):
        if v.size == 0:
            continue
        ax.hist(
            v,
            bins=bins,
            range=range_,
            histtype="step",
            lw=1.6,
            color=color_for(name, i),
            label=f"{name} (n={v.size})",
        )
    ax.set(title=title, xlabel=xlabel, ylabel="count")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return to_img(fig, alt)


def grouped_bars(
    categories: Sequence[str],
    series: Mapping[str, Sequence[float | None]],
    *,
    title: str,
    ylabel: str,
    alt: str,
) -> Markup:
    """One group of bars per category, one bar per series (model); None is a missing bar."""
    width_in = min(12.0, max(6.0, 0.5 * len(categories) * max(1, len(series)) / 2 + 2))
    fig, (ax,) = new_figure(figsize=(width_in, 3.5))
    x = np.arange(len(categories))
    n = max(1, len(series))
    w = 0.8 / n
    for i, (name, vals) in enumerate(series.items()):
        ys = [np.nan if v is None else float(v) for v in vals]
        ax.bar(x - 0.4 + w * (i + 0.5), ys, w, label=name, color=color_for(name, i))
    ax.set_xticks(x, labels=list(categories))
    ax.tick_params(axis="x", labelrotation=30 if len(categories) > 4 else 0, labelsize=8)
    ax.set(title=title, ylabel=ylabel)
    ax.set_ylim(0, 1.05)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return to_img(fig, alt)


def node_timeline(
    t: Sequence[float],
    nodes: Sequence[float],
    gpus: Sequence[float],
    spans: Sequence[tuple[str, float, float]],
) -> Markup:
    """Alive nodes (and GPUs) over seconds since the first sample; stages as bands."""
    fig, (ax,) = new_figure(figsize=(7.0, 3.2))
    for i, (name, a, b) in enumerate(spans):
        ax.axvspan(a, b, color=color_for(name, i), alpha=0.12, lw=0)
        ax.text(
            (a + b) / 2,
            0.02,
            name,
            rotation=90,
            fontsize=7,
            ha="center",
            va="bottom",
            transform=ax.get_xaxis_transform(),
        )
    ax.step(t, nodes, where="post", label="alive nodes", color="#4C72B0", lw=2)
    if any(gpus):
        ax.step(t, gpus, where="post", label="GPUs", color="#C44E52", lw=1, ls="--")
    ax.set_xlabel("seconds since the run started")
    ax.set_ylabel("count")
    ax.set_ylim(bottom=0)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("cluster size over time (bands: pipeline stages)")
    return to_img(fig, "step plot of alive Ray nodes over time with pipeline stages as bands")
