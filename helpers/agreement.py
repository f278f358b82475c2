"""Agreement with people: SRCC and PLCC of any scorer against a ratings CSV.

A scorer is only as good as its agreement with the people who rate images. The usual
measures (AVA, AADB, Q-Align papers) are Spearman's rank correlation (SRCC: does the
scorer put images in the same *order* as people?) and Pearson's linear correlation
(PLCC: are the scores *linearly* related?). Both come from ``scipy.stats``.

Ratings files in the wild name images inconsistently (``1001``, ``1001.0`` after a round
trip through a spreadsheet, ``1001.jpg``, ``images/1001.JPG``), so ids are cleaned the same
way on both sides before matching, and every row that did not match is reported.

Offline there are no human ratings. :func:`make_ranked_set` ships a small set whose order
is known *by construction*: clean images progressively blurred, noised and JPEG-compressed.
Its ``rating`` column is the degradation level turned round (higher = less damaged), and
every row is labelled ``synthetic-by-construction``: it tests whether a scorer notices
damage, not whether it agrees with people.

Taught in ``notebooks/05_beyond_scoring.ipynb``.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter

from .io import check_writable, save_image, write_text

SYNTHETIC_LABEL = "synthetic-by-construction"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
ID_COLUMNS = ("id", "image_id", "imageid", "image", "file_name", "filename", "file", "path", "name")
RATING_COLUMNS = ("rating", "score", "mos", "mean_score", "mean", "aesthetic", "label")
DEGRADATIONS = ("blur", "noise", "jpeg")


def clean_id(value: object) -> str:
    """One image id, however the file wrote it: ``1001``, ``1001.0``, ``1001.jpg``, ``dir/1001.JPG`` -> ``1001``.

    Taught in ``notebooks/05_beyond_scoring.ipynb``.
    """
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip().replace("\\", "/")
    text = text.rsplit("/", 1)[-1]
    lower = text.lower()
    for suffix in IMAGE_SUFFIXES:
        if lower.endswith(suffix):
            text = text[: -len(suffix)]
            break
    if re.fullmatch(r"-?\d+\.0+", text):  # a spreadsheet turned 1001 into 1001.0
        text = text.split(".", 1)[0]
    return text


def _pick(columns: Sequence[str], wanted: str | None, candidates: Sequence[str], what: str) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise ValueError(f"ratings file has no {what} column {wanted!r}; its columns are {list(columns)}")
        return wanted
    lowered = {c.lower(): c for c in columns}
    for name in candidates:
        if name in lowered:
            return lowered[name]
    raise ValueError(f"cannot tell which column holds the {what}; columns are {list(columns)}. "
                     f"Pass {what}_column=... (looked for {list(candidates)})")


def load_ratings(path: str | Path, id_column: str | None = None, rating_column: str | None = None) -> pd.DataFrame:
    """Read a ratings CSV (AVA/AADB style) into columns ``id`` (cleaned), ``rating`` and the rest.

    Rows whose rating is missing or not a number are dropped with a printed count.
    Taught in ``notebooks/05_beyond_scoring.ipynb``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ratings file {path} does not exist")
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    id_col = _pick(list(raw.columns), id_column, ID_COLUMNS, "id")
    rating_col = _pick(list(raw.columns), rating_column, RATING_COLUMNS, "rating")
    out = raw.copy()
    out["id"] = raw[id_col].map(clean_id)
    out["rating"] = pd.to_numeric(raw[rating_col], errors="coerce")
    bad = out["rating"].isna()
    if bad.any():
        print(f"load_ratings: dropped {int(bad.sum())} row(s) of {path.name} without a numeric {rating_col!r}")
    out = out[~bad].reset_index(drop=True)
    return out


@dataclass
class Agreement:
    """SRCC/PLCC of scores against ratings, on the rows that matched, and what did not match."""

    srcc: float
    plcc: float
    n: int
    srcc_p: float = float("nan")
    plcc_p: float = float("nan")
    unmatched_ratings: list[str] = field(default_factory=list)  # rated, but no score for them
    unmatched_scores: list[str] = field(default_factory=list)  # scored, but not in the ratings
    failed: list[str] = field(default_factory=list)  # in the scores table with an error / no score
    duplicates: list[str] = field(default_factory=list)  # ids seen more than once (first kept)
    label: str = "human ratings"
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """One paragraph a person can read."""
        lines = [f"SRCC {self.srcc:+.3f}  PLCC {self.plcc:+.3f}  on n={self.n} matched images ({self.label})"]
        for name, items in (("rated but not scored", self.unmatched_ratings), ("scored but not rated", self.unmatched_scores),
                            ("failed to score", self.failed), ("duplicate ids (first kept)", self.duplicates)):
            if items:
                shown = ", ".join(items[:8]) + (" ..." if len(items) > 8 else "")
                lines.append(f"  {len(items)} {name}: {shown}")
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def _scores_frame(scores: pd.DataFrame | Mapping[object, float]) -> pd.DataFrame:
    """Scores as columns id, score, error from a ``score_paths`` table or an ``{id: score}`` mapping."""
    if isinstance(scores, Mapping):
        frame = pd.DataFrame({"key": list(scores.keys()), "score": list(scores.values())})
    else:
        frame = scores.copy()
        key = next((c for c in ("id", "path", "file_name") if c in frame.columns), None)
        if key is None or "score" not in frame.columns:
            raise ValueError(f"scores table needs a 'path' (or 'id') column and a 'score' column; it has {list(frame.columns)}")
        frame = frame.rename(columns={key: "key"})
    frame["id"] = frame["key"].map(clean_id)
    frame["score"] = pd.to_numeric(frame["score"], errors="coerce")
    if "error" not in frame.columns:
        frame["error"] = None
    return frame[["id", "score", "error"]]


def agreement(scores: pd.DataFrame | Mapping[object, float], ratings: pd.DataFrame | str | Path,
              label: str | None = None, min_n: int = 3) -> Agreement:
    """SRCC and PLCC (``scipy.stats``) between a scorer's scores and ratings, matched by cleaned id.

    ``scores``: a ``score_paths`` table (columns ``path``, ``score``, ``error``) or ``{id_or_path: score}``.
    ``ratings``: a table from :func:`load_ratings` or a CSV path. Unmatched and failed rows are
    reported on the result, never silently dropped. Raises ``ValueError`` when fewer than
    ``min_n`` images match. Taught in ``notebooks/05_beyond_scoring.ipynb``.
    """
    from scipy import stats

    if not isinstance(ratings, pd.DataFrame):
        ratings = load_ratings(ratings)
    if label is None:
        labels = set(ratings["label"]) if "label" in ratings.columns else set()
        label = SYNTHETIC_LABEL if labels == {SYNTHETIC_LABEL} else "human ratings"
    frame = _scores_frame(scores)
    has_error = frame["error"].map(lambda e: e is not None and not (isinstance(e, float) and math.isnan(e)) and str(e) != "")
    failed_mask = frame["score"].isna() | has_error
    failed = frame.loc[failed_mask, "id"].tolist()
    good = frame[~failed_mask]
    duplicates = sorted(set(good.loc[good["id"].duplicated(), "id"]) | set(ratings.loc[ratings["id"].duplicated(), "id"]))
    good = good.drop_duplicates("id")
    rated = ratings.drop_duplicates("id")
    merged = rated[["id", "rating"]].merge(good[["id", "score"]], on="id", how="inner")
    unmatched_ratings = sorted(set(rated["id"]) - set(good["id"]) - set(failed))
    unmatched_scores = sorted(set(good["id"]) - set(rated["id"]))
    if len(merged) < min_n:
        raise ValueError(f"only {len(merged)} image(s) matched between scores and ratings (need {min_n}); "
                         f"{len(unmatched_ratings)} rated ids had no score (e.g. {unmatched_ratings[:3]}), "
                         f"{len(unmatched_scores)} scored ids were not rated (e.g. {unmatched_scores[:3]}). "
                         "Check that both name images the same way.")
    notes = []
    x, y = merged["score"].to_numpy(float), merged["rating"].to_numpy(float)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        notes.append("scores or ratings are constant: correlation is undefined (nan)")
        srcc = plcc = srcc_p = plcc_p = float("nan")
    else:
        srcc, srcc_p = (float(v) for v in stats.spearmanr(x, y))
        plcc, plcc_p = (float(v) for v in stats.pearsonr(x, y))
    return Agreement(srcc=srcc, plcc=plcc, n=len(merged), srcc_p=srcc_p, plcc_p=plcc_p,
                     unmatched_ratings=unmatched_ratings, unmatched_scores=unmatched_scores, failed=failed,
                     duplicates=duplicates, label=label, notes=notes)


def chain_srcc(scores: pd.DataFrame | Mapping[object, float], ratings: pd.DataFrame,
               by: Sequence[str] = ("source", "kind")) -> pd.DataFrame:
    """SRCC inside each degradation chain of a ranked set (one source image, one kind of damage).

    Within a chain only the damage changes, so this is the cleanest test of "does the
    scorer notice it". Returns one row per chain (``srcc``, ``n``). Taught in ``05_beyond_scoring``.
    """
    from scipy import stats

    frame = _scores_frame(scores).drop_duplicates("id")
    merged = ratings.merge(frame[["id", "score"]], on="id", how="inner")
    rows = []
    for key, group in merged.groupby(list(by)):
        ok = group["score"].notna()
        x, y = group.loc[ok, "score"].to_numpy(float), group.loc[ok, "rating"].to_numpy(float)
        value = float(stats.spearmanr(x, y)[0]) if len(x) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0 else float("nan")
        rows.append({**dict(zip(by, key if isinstance(key, tuple) else (key,))), "srcc": value, "n": len(x)})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- the ranked set (synthetic)

def procedural_images(n: int = 4, size: int = 256, seed: int = 0) -> list[Image.Image]:
    """``n`` small, detailed, made-up scenes (sky gradient, shapes, stripes, text-like marks).

    They carry fine detail on purpose, so blur, noise and JPEG visibly damage them. They are
    the kit's own images (nothing downloaded). Taught in ``05_beyond_scoring``.
    """
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        top, bottom = rng.integers(40, 230, 3), rng.integers(20, 200, 3)
        t = np.linspace(0, 1, size)[:, None, None]
        sky = (top * (1 - t) + bottom * t).repeat(size, axis=1).astype(np.uint8)
        image = Image.fromarray(sky, "RGB")
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(6, 12))):
            x0, y0 = (int(v) for v in rng.integers(0, size - 8, 2))
            w, h = (int(v) for v in rng.integers(size // 12, size // 3, 2))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            box = [x0, y0, min(size - 1, x0 + w), min(size - 1, y0 + h)]
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour, outline=(0, 0, 0), width=2)
        step = int(rng.integers(4, 9))
        ground = size - size // 5
        for x in range(0, size, step):  # a fence of thin stripes: detail that blur removes
            draw.line([(x, ground), (x, size - 1)], fill=(250, 250, 250) if (x // step) % 2 else (10, 10, 10), width=1)
        for _ in range(20):  # "writing": small high-contrast marks
            x, y = (int(v) for v in rng.integers(4, size - 12, 2))
            draw.line([(x, y), (x + int(rng.integers(3, 10)), y + int(rng.integers(-4, 5)))], fill=(0, 0, 0), width=1)
        images.append(image)
    return images


def degrade(image: Image.Image, kind: str, level: int, levels: int = 5, seed: int = 0) -> Image.Image:
    """``image`` damaged by ``kind`` (blur, noise, jpeg) at ``level`` (0 = untouched .. ``levels``-1 = worst).

    Strengths grow geometrically and scale with the image size. Taught in ``05_beyond_scoring``.
    """
    if kind not in DEGRADATIONS:
        raise ValueError(f"unknown degradation {kind!r}; choose from {DEGRADATIONS}")
    image = image.convert("RGB")
    if level <= 0:
        return image.copy()
    frac = level / max(1, levels - 1)  # 0..1
    if kind == "blur":
        radius = 0.5 * 2 ** (4 * frac) * max(image.size) / 256  # 0.5 .. 8 px at 256 px
        return image.filter(ImageFilter.GaussianBlur(radius))
    if kind == "noise":
        sigma = 4 * 2 ** (4 * frac)  # 4 .. 64 grey levels
        rng = np.random.default_rng(seed + level)
        noisy = np.asarray(image, np.float32) + rng.normal(0, sigma, (image.height, image.width, 3))
        return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")
    quality = max(1, int(round(60 * (1 - frac) ** 1.5 + 2)))  # 60 .. 2
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def make_ranked_set(out_dir: str | Path, sources: Iterable[Image.Image] | None = None, n_sources: int = 4,
                    size: int = 256, levels: int = 5, kinds: Sequence[str] = DEGRADATIONS, seed: int = 0,
                    overwrite: bool = False) -> pd.DataFrame:
    """Write a ranked set to ``out_dir``: every source degraded ``levels`` ways by each kind, plus ``ratings.csv``.

    ``ratings.csv`` has ``id,file_name,source,kind,level,rating,label``; ``rating = levels - level``
    (higher = less damaged) and ``label = synthetic-by-construction`` on every row, because these
    are *not* human ratings. ``sources`` default to :func:`procedural_images`. Files are written
    atomically and never over an existing set unless ``overwrite``. Returns the ratings table.
    Taught in ``notebooks/05_beyond_scoring.ipynb``.
    """
    out_dir = Path(out_dir)
    csv_path = check_writable(out_dir / "ratings.csv", overwrite)
    if levels < 3:
        raise ValueError("levels must be at least 3 for a rank correlation to mean anything")
    sources = list(sources) if sources is not None else procedural_images(n_sources, size, seed)
    rows = []
    for s, source in enumerate(sources):
        source = source.convert("RGB")
        for kind in kinds:
            for level in range(levels):
                ident = f"s{s:02d}_{kind}_{level}"
                save_image(degrade(source, kind, level, levels, seed=seed + 1000 * s), out_dir / f"{ident}.png",
                           overwrite=overwrite)
                rows.append({"id": ident, "file_name": f"{ident}.png", "source": f"s{s:02d}", "kind": kind,
                             "level": level, "rating": levels - level, "label": SYNTHETIC_LABEL})
    table = pd.DataFrame(rows)
    write_text(csv_path, table.to_csv(index=False), overwrite=overwrite)
    write_text(out_dir / "README.txt",
               "SYNTHETIC RANKED SET - NOT HUMAN RATINGS.\n"
               "Each source image is degraded progressively (blur, noise, JPEG). 'rating' is the level turned round:\n"
               f"{levels} = untouched, 1 = most damaged. It tests whether a scorer notices damage, nothing more.\n",
               overwrite=overwrite)
    return table


def ranked_set_paths(out_dir: str | Path, ratings: pd.DataFrame | None = None) -> list[Path]:
    """The image paths of a ranked set, in ``ratings.csv`` order."""
    out_dir = Path(out_dir)
    ratings = ratings if ratings is not None else pd.read_csv(out_dir / "ratings.csv")
    return [out_dir / name for name in ratings["file_name"]]

