"""The report's figures, drawn with matplotlib's Agg backend and returned as PNG bytes.

Every function takes plain data (frames, arrays, dicts) and returns bytes: no files, no global state beyond
matplotlib's own, so the same inputs give byte-identical PNGs (the PNG's Software stamp is dropped).
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display, no GUI toolkit, same pixels everywhere

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from curate.report.load import Run  # noqa: E402

DPI = 100
ROW_INCHES = 3.0  # contact sheet: a 2-inch image, its label and three caption lines
EVAL_METRICS = {
    "zeroshot_top1": "zero-shot top-1",
    "zeroshot_top5": "zero-shot top-5",
    "image_to_text_r1": "image→text R@1",
    "image_to_text_r5": "image→text R@5",
    "text_to_image_r1": "text→image R@1",
    "text_to_image_r5": "text→image R@5",
}
NOISE_COLOURS = {  # clean first, in green; each noise kind keeps its colour in every figure
    "none": "#4c9a2a",
    "partial": "#f2b134",
    "duplicate": "#7f7fbf",
    "misaligned": "#d9534f",
    "junk": "#8c564b",
    "corrupt": "#333333",
}
STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.spines.top": False, "axes.spines.right": False}


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def _colours(n: int) -> list:
    palette = plt.get_cmap("tab10")
    return [palette(i % 10) for i in range(n)]


def eval_metrics_present(runs: Sequence[Run]) -> list[str]:
    return [m for m in EVAL_METRICS if any(m in run.evals for run in runs)]


X_AXES = {
    "step": "training step",
    "total_flops": "total FLOPs (everything counted)",
    "total_seconds": "total seconds (everything counted)",
    "shared_flops": "total FLOPs, inherited cost shared",
}
# The two accountings of total FLOPs, as the eval frames' columns and what each panel says it is.
ACCOUNTINGS = {
    "total_flops": "reference's training charged (everything counted)",
    "given_flops": "reference given (its scoring charged, its training not)",
}


def _log_axis(ax) -> None:
    ax.set_xscale("log")
    # Matplotlib labels every minor tick (2×, 3×, ... a decade) of a short log axis, and they overlap:
    # label 1, 2 and 5 of each decade instead.
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.LogFormatterSciNotation(labelOnlyBase=False))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def eval_curves(runs: Sequence[Run], x: str) -> bytes:
    """One panel per eval metric, a line per run, against one of the eval frames' X_AXES columns."""
    metrics = eval_metrics_present(runs)
    cols = min(3, len(metrics))
    rows = -(-len(metrics) // cols)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(
            rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False, layout="constrained"
        )
        for ax, metric in zip(axes.flat, metrics, strict=False):
            for run, colour in zip(runs, _colours(len(runs)), strict=True):
                if metric not in run.evals or (x not in run.evals):
                    continue
                frame = run.evals[[x, metric]].dropna()
                ax.plot(frame[x], frame[metric], marker="o", markersize=3, color=colour, label=run.name)
            ax.set_title(EVAL_METRICS[metric])
            ax.set_xlabel(X_AXES[x])
            if x != "step":
                _log_axis(ax)
            ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
            ax.grid(alpha=0.3)
        for ax in axes.flat[len(metrics) :]:
            ax.set_visible(False)
        handles, labels = axes.flat[0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="outside lower center", ncols=min(4, len(handles)), frameon=False)
        return _png(fig)


def accountings(runs: Sequence[Run], metric: str = "zeroshot_top1") -> bytes:
    """`metric` against total FLOPs in each accounting (ACCOUNTINGS), a panel each, a line per run."""
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True, squeeze=False, layout="constrained")
        for ax, (x, title) in zip(axes.flat, ACCOUNTINGS.items(), strict=True):
            for run, colour in zip(runs, _colours(len(runs)), strict=True):
                if x in run.evals and metric in run.evals:
                    frame = run.evals[[x, metric]].dropna()
                    ax.plot(frame[x], frame[metric], marker="o", markersize=3, color=colour, label=run.name)
            ax.set(title=f"total FLOPs, {title}", xlabel=f"total FLOPs, {title.split(' (')[0]}")
            _log_axis(ax)
            ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
            ax.grid(alpha=0.3)
        axes[0, 0].set_ylabel(EVAL_METRICS[metric])
        handles, labels = axes[0, 0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="outside lower center", ncols=min(4, len(handles)), frameon=False)
        return _png(fig)


def ratio_curves(points: pd.DataFrame, levels: dict[str, float], metric: str = "zeroshot_top1") -> bytes:
    """Final `metric` against the filter ratio F: a line per selection (`points`: selection, ratio, mean,
    std, runs), the std over its runs as error bars; `levels`: each all-data learner's mean, dashed."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(7, 3.6), layout="constrained")
        selections = list(dict.fromkeys(points["selection"]))
        colours = _colours(len(selections) + len(levels))
        for selection, colour in zip(selections, colours, strict=False):
            line = points[points["selection"] == selection].sort_values("ratio")
            ax.errorbar(
                line["ratio"], line["mean"], yerr=line["std"], marker="o", markersize=4, capsize=3,
                color=colour, label=selection,
            )  # fmt: skip
        for (label, value), colour in zip(levels.items(), colours[len(selections) :], strict=True):
            ax.axhline(value, linestyle="--", color=colour, label=label)
        ax.set(title=f"final {EVAL_METRICS[metric]} against the filter ratio", xlabel="filter ratio F")
        ax.set_ylabel(EVAL_METRICS[metric])
        ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        ax.grid(alpha=0.3)
        ax.legend(frameon=False)
        return _png(fig)


def training_curves(runs: Sequence[Run]) -> bytes:
    """Training loss per run; beside it, online JEST's selected vs random learnability where logged (the
    mean of A_ij over a batch's b x b pairs, the units of a selection's batch score)."""
    online = [r for r in runs if "selected_learnability" in r.logs]
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(
            1, 2 if online else 1, figsize=(10 if online else 6, 3.2), squeeze=False, layout="constrained"
        )
        colours = dict(zip([r.name for r in runs], _colours(len(runs)), strict=True))
        ax = axes[0, 0]
        for run in runs:
            if "loss" in run.logs:
                ax.plot(run.logs["step"], run.logs["loss"], color=colours[run.name], label=run.name)
        ax.set(title="training loss (SigLIP)", xlabel="training step")
        ax.grid(alpha=0.3)
        ax.legend(frameon=False)
        if online:
            ax = axes[0, 1]
            for run in online:
                ax.plot(
                    run.logs["step"],
                    run.logs["selected_learnability"],
                    color=colours[run.name],
                    label=f"{run.name}: selected",
                )
                if "random_learnability" in run.logs:
                    ax.plot(
                        run.logs["step"],
                        run.logs["random_learnability"],
                        color=colours[run.name],
                        linestyle="--",
                        label=f"{run.name}: random batch",
                    )
            ax.set(
                title="online JEST: batch learnability",
                xlabel="training step",
                ylabel="mean A_ij over the b x b pairs",
            )
            ax.grid(alpha=0.3)
            ax.legend(frameon=False)
        return _png(fig)


def histograms(groups: dict[str, np.ndarray], xlabel: str, title: str) -> bytes:
    """Overlaid step histograms of each group's values on shared bins (counts, not densities)."""
    values = [v for v in groups.values() if len(v)]
    edges = np.histogram_bin_edges(np.concatenate(values), bins=40) if values else np.linspace(0, 1, 41)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(7, 3.2), layout="constrained")
        for (label, v), colour in zip(groups.items(), _colours(len(groups)), strict=True):
            ax.hist(v, bins=edges, histtype="stepfilled", alpha=0.35, color=colour)
            ax.hist(
                v, bins=edges, histtype="step", linewidth=1.2, color=colour, label=f"{label} (n={len(v)})"
            )
        ax.set(title=title, xlabel=xlabel, ylabel="samples")
        ax.legend(frameon=False)
        return _png(fig)


def noise_order(kinds: set[str]) -> list[str]:
    """Clean first, then the known noise kinds in a fixed order, then any others alphabetically."""
    return [k for k in NOISE_COLOURS if k in kinds] + sorted(kinds - set(NOISE_COLOURS))


def noise_shares(selections: dict[str, dict[str, float]]) -> bytes:
    """A stacked horizontal bar per selection: the share of each noise kind among its samples."""
    kinds = noise_order({k for s in selections.values() for k in s})
    extra = iter(_colours(10)[::-1])
    labels = list(selections)[::-1]  # the first selection on top
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(9, 0.9 + 0.45 * len(labels)), layout="constrained")
        left = np.zeros(len(labels))
        for kind in kinds:
            shares = np.array([selections[label].get(kind, 0.0) for label in labels])
            bars = ax.barh(
                labels, shares, left=left, color=NOISE_COLOURS.get(kind) or next(extra), label=kind
            )
            ax.bar_label(
                bars,
                [f"{s:.0%}" if s >= 0.05 else "" for s in shares],
                label_type="center",
                fontsize=8,
                color="white",
            )
            left += shares
        ax.set(xlim=(0, 1), xlabel="share of samples")
        ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        fig.legend(loc="outside upper center", ncols=len(kinds), frameon=False)
        return _png(fig)


def by_noise(values: dict[str, np.ndarray], ylabel: str) -> bytes:
    """A box per noise kind: how the score separates clean pairs from each kind of noise."""
    kinds = noise_order(set(values))
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(7, 3.2), layout="constrained")
        boxes = ax.boxplot([values[k] for k in kinds], patch_artist=True, showfliers=False)
        for patch, kind in zip(boxes["boxes"], kinds, strict=True):
            patch.set(facecolor=NOISE_COLOURS.get(kind, "#999999"), alpha=0.6)
        ax.set_xticks(range(1, len(kinds) + 1), [f"{k}\n(n={len(values[k])})" for k in kinds])
        ax.set(ylabel=ylabel, title=f"{ylabel} by noise kind")
        ax.grid(axis="y", alpha=0.3)
        return _png(fig)


def super_batches(frame) -> bytes:
    """Per super-batch: the criterion score of the selected batch next to a random batch of the same size."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(7, 3.2), layout="constrained")
        ax.plot(
            frame["super_batch"], frame["selected_score"], marker="o", markersize=3, label="selected batch"
        )
        ax.plot(
            frame["super_batch"],
            frame["random_score"],
            marker="o",
            markersize=3,
            linestyle="--",
            label="random batch, same size",
        )
        ax.set(
            title="batch score per super-batch", xlabel="super-batch", ylabel="mean A_ij over the b x b pairs"
        )
        ax.grid(alpha=0.3)
        ax.legend(frameon=False)
        return _png(fig)


def contact_sheet(samples: Sequence[tuple[bytes | None, str, str]], title: str, cols: int = 6) -> bytes:
    """A grid of images, each with a label line (`key · score`) and its caption, wrapped, underneath."""
    rows = max(1, -(-len(samples) // cols))
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(rows, cols, figsize=(2 * cols, ROW_INCHES * rows), squeeze=False)
        fig.suptitle(title, fontsize=11)
        for ax in axes.flat:
            ax.axis("off")
        for ax, (image, label, caption) in zip(axes.flat, samples, strict=False):
            pixels = _pixels(image)
            if pixels is None:
                ax.text(0.5, 0.5, "image does not\ndecode", ha="center", va="center", transform=ax.transAxes)
            else:
                ax.imshow(pixels, interpolation="nearest")
            wrapped = textwrap.shorten(caption, 90, placeholder="…")
            ax.set_title(label, fontsize=8, loc="left")
            ax.text(0, -0.04, textwrap.fill(wrapped, 28), transform=ax.transAxes, fontsize=7, va="top")
        # Inches, turned into figure fractions: a title band on top, room for three caption lines per row.
        height = ROW_INCHES * rows
        fig.subplots_adjust(left=0.02, right=0.98, top=1 - 0.45 / height, bottom=0.75 / height, hspace=0.6)
        return _png(fig)


def _pixels(data: bytes | None) -> np.ndarray | None:
    if not data:
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"))
    except Exception:  # PIL raises many types on bad data; an undecodable image is a cell, not a crash
        return None
