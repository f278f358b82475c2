"""Plots of scored images: a grid with each score, a histogram, folders side by side.

Every function takes a frame from :func:`helpers.scoring.score_paths` (columns ``path``,
``score``, ``error``; any scorer) and returns a matplotlib ``Figure``; none of them
writes a file, use :func:`save_figure` for that. Titles carry the frame's ``weights``
when they are not real, so an offline-random plot cannot pass for a real one.

Taught in ``notebooks/01_scoring.ipynb``; reused by the later notebooks to compare
base-model and LoRA panels.
"""

from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

PASS_THRESHOLD = 6.0
PASS_COLOR = "tab:green"
FAIL_COLOR = "tab:red"


def _weights_note(*frames: pd.DataFrame) -> str:
    weights = {f.attrs.get("weights", "unknown") for f in frames}
    weights.discard("real")
    return f"  [weights: {', '.join(sorted(weights))}]" if weights else ""


def _scored(df: pd.DataFrame) -> pd.Series:
    ok = df["score"].notna()
    if "error" in df:
        ok &= df["error"].fillna("").astype(str) == ""
    return df.loc[ok, "score"].astype(float)


def plot_score_grid(df: pd.DataFrame, ncols: int = 4, max_images: int | None = 16, thumb_px: int = 256,
                    threshold: float = PASS_THRESHOLD, sort: bool = False, title: str | None = None):
    """Thumbnails with each image's score in its title (green at or above ``threshold``,
    red below); files that failed are shown as their error. ``sort=True`` puts the best first."""
    import matplotlib.pyplot as plt
    from PIL import Image

    from .scoring import ImageLoadError, open_rgb

    rows = df.sort_values("score", ascending=False, na_position="last") if sort else df
    if max_images is not None:
        rows = rows.head(max_images)
    n = max(len(rows), 1)
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3 * ncols, 3.4 * nrows), squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, (_, row) in zip(axes.flat, rows.iterrows()):
        name = Path(str(row["path"])).name
        short = name if len(name) <= 28 else name[:25] + "..."
        error = str(row.get("error", "") or "")
        if error or pd.isna(row["score"]):
            ax.text(0.5, 0.5, textwrap.fill(error or "no score", 28), ha="center", va="center", fontsize=8,
                    color=FAIL_COLOR, transform=ax.transAxes, wrap=True)
            ax.set_title(f"{short}\nnot scored", fontsize=9, color="grey")
            continue
        try:
            image = open_rgb(row["path"])
            image.thumbnail((thumb_px, thumb_px), Image.Resampling.BICUBIC)
            ax.imshow(image)
        except ImageLoadError as exc:  # changed on disk since it was scored
            ax.text(0.5, 0.5, textwrap.fill(str(exc), 28), ha="center", va="center", fontsize=8,
                    transform=ax.transAxes)
        score = float(row["score"])
        ax.set_title(f"{short}\n{score:.3f}", fontsize=9, color=PASS_COLOR if score >= threshold else FAIL_COLOR)
    fig.suptitle((title or f"{len(rows)} of {len(df)} image(s), score in each title") + _weights_note(df),
                 fontsize=11)
    return fig


def plot_score_histogram(df: pd.DataFrame, threshold: float = PASS_THRESHOLD, bins: int = 40, ax=None,
                         title: str | None = None):
    """Histogram of the scores with the ``threshold`` line (6.0) and the mean line."""
    import matplotlib.pyplot as plt

    scores = _scored(df)
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 3.5))
    else:
        fig = ax.figure
    low = min([threshold - 1, *([scores.min()] if len(scores) else [])])
    high = max([threshold + 1, *([scores.max()] if len(scores) else [])])
    pad = 0.03 * (high - low)
    # Bins span the whole axis, so scores far from the line still show as a visible bar.
    edges = np.linspace(low - pad, high + pad, bins + 1)
    if len(scores):
        ax.hist(scores, bins=edges, color="tab:blue", alpha=0.75, label=f"{len(scores)} scored")
        mean = float(scores.mean())
        ax.axvline(mean, color=PASS_COLOR if mean >= threshold else FAIL_COLOR, linewidth=2,
                   label=f"mean {mean:.3f}")
    ax.axvline(threshold, color="black", linestyle="--", linewidth=1.5, label=f"needed {threshold:g}")
    ax.set_xlim(low - pad, high + pad)
    ax.set_xlabel("aesthetic score")
    ax.set_ylabel("images")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title((title or "score distribution") + _weights_note(df), fontsize=10)
    fig.tight_layout()
    return fig


def plot_score_comparison(frames: Mapping[str, pd.DataFrame], threshold: float = PASS_THRESHOLD,
                          title: str | None = None, seed: int = 0):
    """Folders side by side (e.g. ``{"base": df_base, "LoRA": df_lora}``): every score as a
    dot, each folder's mean as a bar with its value, and the ``threshold`` line."""
    import matplotlib.pyplot as plt

    if not frames:
        raise ValueError("plot_score_comparison needs at least one frame, e.g. {'base': df1, 'lora': df2}")
    rng = np.random.default_rng(seed)
    fig, ax = plt.subplots(figsize=(max(4.0, 2.0 * len(frames) + 1.0), 4))
    all_scores, ticks = [], []
    for x, (label, df) in enumerate(frames.items()):
        scores = _scored(df)
        all_scores.extend(scores.tolist())
        n_failed = len(df) - len(scores)
        ticks.append(f"{label}\n(n={len(scores)}" + (f", {n_failed} failed)" if n_failed else ")"))
        ax.scatter(x + rng.uniform(-0.18, 0.18, len(scores)), scores, s=18, alpha=0.7, zorder=3)
        if len(scores):
            mean = float(scores.mean())
            color = PASS_COLOR if mean >= threshold else FAIL_COLOR
            ax.hlines(mean, x - 0.32, x + 0.32, colors=color, linewidth=3, zorder=4)
            ax.annotate(f"mean {mean:.3f}", (x, mean), xytext=(0, 4), textcoords="offset points", ha="center",
                        va="bottom", fontsize=9, color=color, fontweight="bold")
    ax.set_xticks(list(range(len(frames))), ticks)
    ax.axhline(threshold, color="black", linestyle="--", linewidth=1.2, label=f"needed {threshold:g}")
    low = min([threshold - 1, *all_scores])
    high = max([threshold + 1, *all_scores])
    pad = 0.05 * (high - low)
    ax.set_ylim(low - pad, high + pad)
    ax.set_xlim(-0.6, len(frames) - 0.4)
    ax.legend(loc="best", fontsize=8)
    ax.set_ylabel("aesthetic score")
    ax.set_title((title or " vs ".join(frames)) + _weights_note(*frames.values()), fontsize=10)
    fig.tight_layout()
    return fig


def save_figure(fig, path: str | os.PathLike, overwrite: bool = False, dpi: int = 120) -> Path:
    """Save ``fig`` atomically (the format comes from the extension); never over a file unless ``overwrite``."""
    from .io import atomic_path

    path = Path(path)
    with atomic_path(path, overwrite) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=dpi, bbox_inches="tight")
    return path
