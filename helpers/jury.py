"""The jury sheet: judge a strip's panels the way the competition does.

The jury disqualifies an entry whose images average below 6.0 on the aesthetic predictor
and gives **style consistency across the panels 30 %** of the marks. This module measures
both from one forward pass of the competition predictor (``AestheticsPredictorV2Linear``,
loaded by :func:`helpers.scoring.load_competition_scorer`): its linear head gives the
aesthetic score and its CLIP vision tower gives ``image_embeds``, the (unit-length)
embedding the score is computed from.

Style consistency is the cosine similarity of those embeddings:

- per panel: the mean similarity of that panel to every other panel; the lowest is the
  **odd one out** (the panel to redraw first);
- for the strip: the mean over all distinct pairs (1.0 = identical images).

:func:`jury_sheet` does it for a run folder written by :func:`helpers.panels.generate_panels`
(its ``panel_*.png``), :func:`write_jury_sheet` writes ``jury.csv``, ``jury.json`` and
``jury.png`` into the run folder, atomically. Every output says which weights judged it:
``offline-random`` numbers show the mechanics, not the answer.

Taught in ``notebooks/04_comic_strip.ipynb`` (the jury sheet cells) and used by
``notebooks/07_experiments.ipynb``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from .scoring import PASS_THRESHOLD, ImageLoadError, NoImagesError, open_rgb

JURY_CSV, JURY_JSON, JURY_PNG = "jury.csv", "jury.json", "jury.png"
TABLE_COLUMNS = ["panel", "path", "aesthetic", "consistency", "odd_one_out", "error"]


def embed_and_score(scorer, images: Sequence[Image.Image], batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Aesthetic scores ``(N,)`` and unit image embeddings ``(N, D)`` from one predictor pass.

    ``scorer`` is a :class:`helpers.scoring.CompetitionScorer` (its ``preprocess`` makes the
    CLIP pixels, its ``predictor`` returns ``(loss, logits, image_embeds)`` with
    ``return_dict=False``).
    """
    import torch

    if not callable(getattr(scorer, "preprocess", None)) or not hasattr(scorer, "predictor"):
        raise TypeError(f"{type(scorer).__name__} has no CLIP predictor to embed with; "
                        "use helpers.scoring.load_competition_scorer()")
    scores, embeds = [], []
    for start in range(0, len(images), batch_size):
        pixels = torch.stack([scorer.preprocess(im) for im in images[start:start + batch_size]])
        with torch.inference_mode():
            _, logits, image_embeds = scorer.predictor(
                pixel_values=pixels.to(scorer.device, scorer.dtype), return_dict=False)
        scores.append(logits.float().reshape(-1).cpu().numpy())
        embeds.append(image_embeds.float().cpu().numpy())
    return np.concatenate(scores), np.concatenate(embeds)


def similarity_matrix(embeds: np.ndarray) -> np.ndarray:
    """Pairwise cosine similarity ``(N, N)`` of the rows of ``embeds`` (normalised here again)."""
    embeds = np.asarray(embeds, dtype=np.float64)
    if embeds.ndim != 2 or len(embeds) == 0:
        raise ValueError(f"expected a (N, D) array of embeddings, got shape {embeds.shape}")
    norms = np.linalg.norm(embeds, axis=1, keepdims=True)
    if not np.all(norms > 0):
        raise ValueError("an embedding has zero length; cosine similarity is undefined for it")
    unit = embeds / norms
    return np.clip(unit @ unit.T, -1.0, 1.0)


def consistency(embeds: np.ndarray) -> tuple[np.ndarray, float, int | None]:
    """Style consistency of a set of panels from their embeddings.

    Returns ``(per_panel, strip, odd)``: each panel's mean cosine similarity to the others,
    the mean over all distinct pairs, and the index of the odd one out (the lowest panel;
    None with fewer than 3 panels, where "odd" means nothing). Needs at least 2 panels.
    """
    sim = similarity_matrix(embeds)
    n = len(sim)
    if n < 2:
        raise ValueError("style consistency needs at least 2 panels")
    off = sim[~np.eye(n, dtype=bool)].reshape(n, n - 1)
    per_panel = off.mean(axis=1)
    strip = float(sim[np.triu_indices(n, k=1)].mean())
    odd = int(np.argmin(per_panel)) if n >= 3 else None
    return per_panel, strip, odd


@dataclass
class JurySheet:
    """One run judged: the per-panel table, the strip summary and the similarity matrix."""

    folder: Path | None
    table: pd.DataFrame
    summary: dict[str, Any]
    similarity: np.ndarray = field(repr=False)

    @property
    def weights(self) -> str:
        return self.summary["weights"]

    def verdict(self) -> str:
        """One line: aesthetic mean and verdict, strip consistency, odd one out, weights."""
        s = self.summary
        word = "PASSES" if s["passes"] else "DOES NOT QUALIFY"
        odd = f"; odd one out: panel {s['odd_one_out']}" if s["odd_one_out"] is not None else ""
        line = (f"aesthetic mean {s['aesthetic_mean']:.3f} -> {word} (needs >= {s['threshold']:.1f}); "
                f"style consistency {s['consistency']:.3f}{odd}")
        if s["n_failed"]:
            line += f"; {s['n_failed']} panel(s) could not be judged"
        if s["weights"] != "real":
            line += f"  [weights: {s['weights']}: these numbers show the mechanics, not the answer]"
        return line


def run_panels(folder: str | os.PathLike) -> list[Path]:
    """The panels of a run folder (``panel_*.png``, in scene order)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NoImagesError(f"{folder} is not a folder; give a run folder from helpers.panels.generate_panels")
    panels = sorted(folder.glob("panel_*.png"))
    if not panels:
        raise NoImagesError(f"no panel_*.png in {folder}: generate the panels first (notebooks/04_comic_strip.ipynb)")
    return panels


def judge_images(paths: Sequence[str | os.PathLike], scorer, threshold: float = PASS_THRESHOLD,
                 folder: str | os.PathLike | None = None, panel_weights: str | None = None) -> JurySheet:
    """The jury sheet for these image files (in strip order), judged by ``scorer``.

    A file that cannot be opened is a row with its ``error`` and is left out of the means; it
    never stops the sheet. Needs at least 2 readable panels for consistency.
    """
    paths = [Path(p) for p in paths]
    images, errors = [], []
    for path in paths:
        try:
            images.append(open_rgb(path))
            errors.append("")
        except ImageLoadError as exc:
            images.append(None)
            errors.append(str(exc))
    good = [i for i, im in enumerate(images) if im is not None]
    if len(good) < 2:
        raise ValueError(f"only {len(good)} of {len(paths)} panel(s) could be read "
                         f"({'; '.join(f'{p.name}: {e}' for p, e in zip(paths, errors) if e) or 'none given'}); "
                         "a jury sheet needs at least 2")
    scores, embeds = embed_and_score(scorer, [images[i] for i in good])
    per_panel, strip, odd = consistency(embeds)
    sim = similarity_matrix(embeds)
    n = len(paths)
    aesthetic = np.full(n, np.nan)
    cons = np.full(n, np.nan)
    aesthetic[good] = scores
    cons[good] = per_panel
    odd_index = good[odd] if odd is not None else None
    table = pd.DataFrame({
        "panel": [i + 1 for i in range(n)], "path": [str(p) for p in paths], "aesthetic": aesthetic,
        "consistency": cons, "odd_one_out": [i == odd_index for i in range(n)], "error": errors,
    }, columns=TABLE_COLUMNS)
    weights = getattr(scorer, "weights", "unknown")
    mean = float(np.mean(scores))
    summary = {
        "n_panels": n, "n_judged": len(good), "n_failed": n - len(good),
        "aesthetic_mean": mean, "aesthetic_min": float(np.min(scores)), "aesthetic_max": float(np.max(scores)),
        "threshold": threshold, "passes": bool(mean >= threshold),
        "consistency": strip, "consistency_min": float(np.min(per_panel)),
        "odd_one_out": odd_index + 1 if odd_index is not None else None,
        "scorer": getattr(scorer, "name", type(scorer).__name__), "weights": weights,
        "panel_weights": panel_weights,
        "consistency_measure": "mean pairwise cosine similarity of the predictor's CLIP image_embeds",
    }
    full = np.full((n, n), np.nan)
    full[np.ix_(good, good)] = sim
    table.attrs.update(weights=weights, scorer=summary["scorer"])
    return JurySheet(folder=Path(folder) if folder else None, table=table, summary=summary, similarity=full)


def jury_sheet(run_folder: str | os.PathLike, scorer=None, threshold: float = PASS_THRESHOLD) -> JurySheet:
    """The jury sheet of one panel run folder (``panel_*.png`` + ``manifest.json``).

    ``scorer`` defaults to :func:`helpers.scoring.load_competition_scorer` (real weights when
    present, else the offline random set). The run's own weights (from its manifest) are kept
    as ``panel_weights`` beside the judge's ``weights``.
    """
    from .panels import MANIFEST, load_manifest

    folder = Path(run_folder)
    paths = run_panels(folder)
    if scorer is None:
        from .scoring import load_competition_scorer

        scorer = load_competition_scorer()
    panel_weights = load_manifest(folder).get("weights") if (folder / MANIFEST).exists() else None
    return judge_images(paths, scorer, threshold, folder=folder, panel_weights=panel_weights)


def plot_jury_sheet(sheet: JurySheet):
    """A figure: aesthetic score per panel against the 6.0 line, each panel's consistency
    (odd one out in red) and the pairwise similarity matrix. Returns the ``Figure``."""
    import matplotlib.pyplot as plt

    t, s = sheet.table, sheet.summary
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(14, 4), gridspec_kw={"width_ratios": [1.2, 1.2, 1]})
    colors = ["tab:green" if v >= s["threshold"] else "tab:red" for v in t["aesthetic"].fillna(-np.inf)]
    ax1.bar(t["panel"], t["aesthetic"].fillna(0), color=colors)
    ax1.axhline(s["threshold"], color="black", ls="--", lw=1, label=f"{s['threshold']:.1f} to qualify")
    ax1.axhline(s["aesthetic_mean"], color="tab:blue", lw=1, label=f"mean {s['aesthetic_mean']:.2f}")
    ax1.set(title="aesthetic score", xlabel="panel", xticks=list(t["panel"]))
    ax1.legend(fontsize=8)
    ccolors = ["tab:red" if odd else "tab:gray" for odd in t["odd_one_out"]]
    ax2.bar(t["panel"], t["consistency"].fillna(0), color=ccolors)
    ax2.axhline(s["consistency"], color="tab:blue", lw=1, label=f"strip {s['consistency']:.3f}")
    ax2.set(title="style consistency (mean cosine to the others)", xlabel="panel", xticks=list(t["panel"]))
    low = np.nanmin(t["consistency"])
    ax2.set_ylim(max(-1.0, low - 0.05), 1.0)
    ax2.legend(fontsize=8)
    im = ax3.imshow(sheet.similarity, vmin=float(np.nanmin(sheet.similarity)), vmax=1.0, cmap="viridis")
    ax3.set(title="pairwise cosine similarity", xticks=range(len(t)), yticks=range(len(t)),
            xticklabels=list(t["panel"]), yticklabels=list(t["panel"]))
    fig.colorbar(im, ax=ax3, fraction=0.046)
    name = f"{sheet.folder.parent.name}/{sheet.folder.name}" if sheet.folder else "panels"
    verdict = "passes" if s["passes"] else "does not qualify"
    fig.suptitle(f"jury sheet: {name} - {verdict}, consistency {s['consistency']:.3f}  "
                 f"[weights: {s['weights']}]")
    fig.tight_layout()
    return fig


def write_jury_sheet(sheet: JurySheet, folder: str | os.PathLike | None = None, overwrite: bool = False,
                     figure: bool = True) -> dict[str, Path]:
    """Write ``jury.csv`` (the table, with a ``weights`` column), ``jury.json`` (the summary) and
    ``jury.png`` (the figure) into ``folder`` (default: the run folder), atomically; never over
    existing files unless ``overwrite``. Returns the paths written."""
    from .io import atomic_path, check_writable, write_json
    from .plots import save_figure

    folder = Path(folder or sheet.folder or ".")
    targets = {"csv": folder / JURY_CSV, "json": folder / JURY_JSON}
    if figure:
        targets["png"] = folder / JURY_PNG
    for path in targets.values():  # refuse before writing anything, so no half sheet is left
        check_writable(path, overwrite)
    with atomic_path(targets["csv"], overwrite) as tmp:
        sheet.table.assign(weights=sheet.weights).to_csv(tmp, index=False, encoding="utf-8")
    write_json(targets["json"], {**sheet.summary, "similarity": np.round(sheet.similarity, 6).tolist()}, overwrite)
    if figure:
        import matplotlib.pyplot as plt

        fig = plot_jury_sheet(sheet)
        save_figure(fig, targets["png"], overwrite=overwrite)
        plt.close(fig)
    return targets


__all__ = ["JURY_CSV", "JURY_JSON", "JURY_PNG", "TABLE_COLUMNS", "embed_and_score", "similarity_matrix",
           "consistency", "JurySheet", "run_panels", "judge_images", "jury_sheet", "plot_jury_sheet",
           "write_jury_sheet"]
