"""The competition's aesthetic judge: score images, folders and whole runs, fast and safely.

The challenge ranks nothing by this score, but it *disqualifies* an entry whose images
average below 6.0 on the LAION aesthetic predictor V2 (``sac+logos+ava1-l14-linearMSE``:
a CLIP ViT-L/14 image embedding fed to a small linear head). The original scorer opened
one file at a time, stopped at the first bad one and returned 0 for an empty folder. Here:

- :func:`load_competition_scorer` loads the real predictor with its real loaders
  (``AestheticsPredictorV2Linear.from_pretrained`` and ``CLIPProcessor.from_pretrained``),
  in fp16 on a GPU and fp32 on a CPU (fp32 gives the original's numbers to 1e-4).
- :func:`score_paths` decodes images in worker threads, batches them on the device and
  returns one row per input, in input order: ``path, score, error, width, height``. A file
  that cannot be scored gets its reason in ``error``; it never stops the run.
- :func:`summarize` gives counts, mean/min/max and the verdict (mean >= 6.0). When nothing
  could be scored it raises :class:`NothingScoredError`: never a score of 0.

Any other scorer (a reward model, a VLM judge) plugs into :func:`score_paths` by having
``name``, ``weights`` and ``score_images(list[PIL.Image]) -> list[float]``.

Taught in ``notebooks/01_scoring.ipynb``. Command line: ``python -m helpers.score --help``.
"""

from __future__ import annotations

import math
import os
import threading
from collections import deque
from contextlib import contextmanager
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, Sequence

import pandas as pd
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

PASS_THRESHOLD = 6.0
COMPETITION_SCORER = "LAION aesthetic predictor V2 (sac+logos+ava1-l14-linearMSE)"
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
COLUMNS = ["path", "score", "error", "width", "height"]


class Scorer(Protocol):
    """What :func:`score_paths` needs from a scorer."""

    name: str
    weights: str

    def score_images(self, images: list[Image.Image]) -> list[float]: ...


class NoImagesError(FileNotFoundError):
    """There was no image file to score (empty folder, wrong folder, missing --recursive)."""


class NothingScoredError(ValueError):
    """Image files were found but not one of them could be scored."""


class ImageLoadError(Exception):
    """One file could not be turned into an RGB image; ``size`` is known for some failures."""

    def __init__(self, reason: str, size: tuple[int, int] | None = None):
        super().__init__(reason)
        self.size = size


# --------------------------------------------------------------------------- opening images

def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB, keeping what a person would see."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit (and 32-bit integer) greyscale: scale to 8 bits instead of clipping to white.
        image = image.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    elif image.mode == "F":
        image = image.convert("L")
    elif image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # Pillow asks for this before dropping palette transparency
    return image.convert("RGB")


_strict_lock = threading.Lock()
_strict_users = 0
_saved_truncated_flag = False


@contextmanager
def _strict_decoding():
    """Decode with Pillow's ``LOAD_TRUNCATED_IMAGES`` off, whatever the process set.

    The flag is process-wide and some libraries turn it on when imported (Data-Juicer does),
    which would let a truncated file be scored as if it were whole. Reference-counted, so
    decoding threads can overlap; the caller's value is restored when the last one ends.
    """
    global _strict_users, _saved_truncated_flag
    with _strict_lock:
        if _strict_users == 0:
            _saved_truncated_flag = ImageFile.LOAD_TRUNCATED_IMAGES
            ImageFile.LOAD_TRUNCATED_IMAGES = False
        _strict_users += 1
    try:
        yield
    finally:
        with _strict_lock:
            _strict_users -= 1
            if _strict_users == 0:
                ImageFile.LOAD_TRUNCATED_IMAGES = _saved_truncated_flag


def open_rgb(path: str | os.PathLike) -> Image.Image:
    """Open ``path`` as a fully decoded RGB image, upright (EXIF orientation applied).

    Animated images give their first frame; 16-bit greyscale is scaled to 8 bits; alpha is
    dropped. Raises :class:`ImageLoadError` with a reason a person can act on: missing file
    or broken symlink, empty file, not an image, truncated, or larger than Pillow's
    decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``).
    """
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise ImageLoadError(f"broken symlink (points to {os.readlink(path)})")
    if not path.exists():
        raise ImageLoadError("file not found")
    if path.is_dir():
        raise ImageLoadError("is a folder, not an image")
    if path.stat().st_size == 0:
        raise ImageLoadError("empty file (0 bytes)")
    limit = Image.MAX_IMAGE_PIXELS
    try:
        with Image.open(path) as image:
            size = image.size
            if limit and size[0] * size[1] > limit:
                raise ImageLoadError(
                    f"image too large: {size[0]}x{size[1]} = {size[0] * size[1]:,} pixels is over Pillow's "
                    f"decompression-bomb limit of {limit:,} (PIL.Image.MAX_IMAGE_PIXELS); downscale it, or raise "
                    "the limit if you trust the file", size)
            if getattr(image, "is_animated", False):
                image.seek(0)
            with _strict_decoding():
                image.load()
            upright = ImageOps.exif_transpose(image)
            return _to_rgb(upright if upright is not None else image).copy()
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(f"image too large (Pillow decompression-bomb limit): {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageLoadError(f"not an image Pillow can read ({path.suffix or 'no extension'} file)") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        text = str(exc)
        if "truncated" in text.lower() or "broken data stream" in text.lower():
            raise ImageLoadError(f"truncated or corrupt image data ({text})") from exc
        raise ImageLoadError(f"cannot decode: {type(exc).__name__}: {text}") from exc


def list_images(paths_or_folder: str | os.PathLike | Iterable[str | os.PathLike],
                recursive: bool = False) -> list[Path]:
    """The files to score. A folder gives its image files (by extension, sorted, hidden
    files skipped; with ``recursive`` its subfolders too); a file or list of files is kept
    as given, in order. Broken symlinks are kept so they can be reported.

    Raises :class:`NoImagesError` when there is nothing to score, saying why.
    """
    if isinstance(paths_or_folder, (str, os.PathLike)):
        items = [Path(paths_or_folder)]
    else:
        items = [Path(p) for p in paths_or_folder]
    found: list[Path] = []
    for item in items:
        if item.is_dir():
            walker = item.rglob("*") if recursive else item.iterdir()
            files = [p for p in walker
                     if p.suffix.lower() in IMAGE_EXTENSIONS
                     and not any(part.startswith(".") for part in p.relative_to(item).parts)
                     and (p.is_file() or (p.is_symlink() and not p.exists()))]
            found.extend(sorted(files, key=lambda p: str(p.relative_to(item))))
        elif item.exists() or item.is_symlink():
            found.append(item)
        else:
            raise NoImagesError(f"{item} does not exist; give a folder of images or image files")
    if not found:
        where = ", ".join(str(i) for i in items) or "(no paths given)"
        hint = ""
        if not recursive and any(i.is_dir() and any(c.is_dir() for c in i.iterdir()) for i in items):
            hint = " It has subfolders: pass recursive=True (--recursive) to look inside them."
        raise NoImagesError(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {where}.{hint} "
                            "Nothing was scored; an empty folder has no score (not 0).")
    return found


# --------------------------------------------------------------------------- the scorer

def seed_scorer(predictor, processor, device: str = "cpu") -> Callable[[Image.Image], float]:
    """The competition's own one-image ``get_aesthetics_score`` (seed 001), kept unchanged.

    It is the reference: the tests check the kit's batched scores equal it within 1e-4, and
    ``benchmarks/bench_scoring.py`` times it against :func:`score_paths`.
    """
    import torch

    def get_aesthetics_score(image):
        inputs = processor(images=image, return_tensors="pt")
        inputs = {k: v.to(device) for k, v in inputs.items()}
        with torch.no_grad():
            outputs = predictor(**inputs)
        prediction = outputs.logits
        return prediction.tolist()[0][0]

    return get_aesthetics_score


def _auto_device(device: str | None) -> str:
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def _dtype(dtype: Any, device: str):
    import torch

    if dtype in (None, "auto"):
        return torch.float16 if device.startswith("cuda") else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
             "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if dtype not in names:
        raise ValueError(f"dtype {dtype!r} is not one of auto, fp32, fp16, bf16")
    return names[dtype]


class CompetitionScorer:
    """The LAION aesthetic predictor V2 with its CLIP processor, ready to score batches.

    Built by :func:`load_competition_scorer`, or from a predictor and processor you loaded
    yourself (``notebooks/01_scoring.ipynb`` does that to show the modules first).
    ``preprocess`` (one image -> pixel tensor) runs in worker threads; ``score_pixels``
    runs a batch on the device.
    """

    def __init__(self, predictor, processor, weights: str, device: str | None = None, dtype: Any = None,
                 name: str = COMPETITION_SCORER):
        self.device = _auto_device(device)
        self.dtype = _dtype(dtype, self.device)
        self.predictor = predictor.to(self.device, self.dtype).eval()
        self.processor = processor
        self.weights = weights
        self.name = name

    def __repr__(self) -> str:
        return f"CompetitionScorer({self.name!r}, weights={self.weights!r}, device={self.device!r}, dtype={self.dtype})"

    def preprocess(self, image: Image.Image):
        """One RGB image -> its ``(3, 224, 224)`` float32 pixel tensor (CLIP resize, crop, normalise)."""
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]

    def score_pixels(self, pixel_values) -> list[float]:
        """Scores for a batch of pixel tensors ``(N, 3, 224, 224)``."""
        import torch

        with torch.inference_mode():
            logits = self.predictor(pixel_values=pixel_values.to(self.device, self.dtype)).logits
        return logits.float().reshape(-1).cpu().tolist()

    def score_images(self, images: list[Image.Image], batch_size: int = 16) -> list[float]:
        """Scores for PIL images (any mode; converted to RGB), in order."""
        import torch

        scores: list[float] = []
        for start in range(0, len(images), batch_size):
            batch = [self.preprocess(_to_rgb(im)) for im in images[start:start + batch_size]]
            scores.extend(self.score_pixels(torch.stack(batch)))
        return scores


def load_competition_scorer(models=None, device: str | None = None, dtype: Any = None) -> CompetitionScorer:
    """Load the competition's predictor and processor with their real loaders.

    ``models`` is a :class:`helpers.models.ResolvedModels` holding ``aesthetic`` (default:
    ``resolve_models(("aesthetic",))``: real weights if present, else the offline random
    set, said loudly). ``device``: ``cuda``/``cpu``/None (auto). ``dtype``: None (fp16 on a
    GPU, fp32 on a CPU), or ``fp32``/``fp16``/``bf16``. The scorer's ``weights`` is
    ``real`` or ``offline-random``.
    """
    from aesthetics_predictor import AestheticsPredictorV2Linear
    from transformers import CLIPProcessor

    if models is None:
        from .models import resolve_models

        models = resolve_models(("aesthetic",))
    path = models.aesthetic
    predictor = AestheticsPredictorV2Linear.from_pretrained(path)
    processor = CLIPProcessor.from_pretrained(path)
    return CompetitionScorer(predictor, processor, weights=models.sources.get("aesthetic", models.weights),
                             device=device, dtype=dtype)


# --------------------------------------------------------------------------- scoring many files

@dataclass
class _Decoded:
    payload: Any  # a pixel tensor (fast path) or an RGB image (generic scorers)
    width: int | None
    height: int | None
    error: str | None


def _decode(path: Path, prepare: Callable[[Image.Image], Any] | None) -> _Decoded:
    try:
        image = open_rgb(path)
    except ImageLoadError as exc:
        w, h = exc.size if exc.size else (None, None)
        return _Decoded(None, w, h, str(exc))
    except Exception as exc:  # anything else about one file stays about that file
        return _Decoded(None, None, None, f"cannot open: {type(exc).__name__}: {exc}")
    try:
        payload = prepare(image) if prepare else image
    except Exception as exc:
        return _Decoded(None, image.width, image.height, f"preprocessing failed: {type(exc).__name__}: {exc}")
    return _Decoded(payload, image.width, image.height, None)


def score_paths(paths_or_folder: str | os.PathLike | Iterable[str | os.PathLike], scorer: Scorer,
                recursive: bool = False, batch_size: int = 16, num_workers: int = 2,
                progress: bool = True) -> pd.DataFrame:
    """Score a folder (or files) with ``scorer``; one row per file, in input order.

    Columns: ``path`` (str), ``score`` (float, NaN when it failed), ``error`` (str, empty when
    scored), ``width``, ``height`` (the upright image size, when known). ``df.attrs`` holds
    the scorer's ``name`` and ``weights``. ``num_workers`` threads decode and preprocess
    while the device scores the previous batch; ``num_workers=0`` does it all in this thread.

    Raises :class:`NoImagesError` when there is no file to score. A file that fails is a row
    with its reason; it never stops the run (see :func:`summarize` for "none scored").
    """
    import torch
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    paths = list_images(paths_or_folder, recursive=recursive)
    fast = callable(getattr(scorer, "preprocess", None)) and callable(getattr(scorer, "score_pixels", None))
    prepare = scorer.preprocess if fast else None
    rows: list[dict] = []

    def score_batch(items: list[_Decoded]) -> list[float | str]:
        payloads = [it.payload for it in items]
        try:
            return list(scorer.score_pixels(torch.stack(payloads)) if fast else scorer.score_images(payloads))
        except Exception as exc:
            if len(items) == 1:
                return [f"scoring failed: {type(exc).__name__}: {exc}"]
            # A batch failed: score one by one so only the culprit is reported.
            return [r for it in items for r in score_batch([it])]

    pool = ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="decode") if num_workers > 0 else None
    batches = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]
    pending: deque[list[Future] | list[_Decoded]] = deque()

    def submit(batch: list[Path]):
        if pool is None:
            return [_decode(p, prepare) for p in batch]
        return [pool.submit(_decode, p, prepare) for p in batch]

    try:
        with tqdm(total=len(paths), desc=f"scoring ({getattr(scorer, 'weights', '?')})", unit="img",
                  disable=not progress) as bar:
            next_batch = 0
            for index, batch in enumerate(batches):
                while next_batch < len(batches) and next_batch <= index + 1:  # decode one batch ahead
                    pending.append(submit(batches[next_batch]))
                    next_batch += 1
                decoded = [f.result() if isinstance(f, Future) else f for f in pending.popleft()]
                good = [i for i, d in enumerate(decoded) if d.error is None]
                results: list[float | str | None] = [None] * len(decoded)
                if good:
                    for i, result in zip(good, score_batch([decoded[i] for i in good])):
                        results[i] = result
                for path, d, result in zip(batch, decoded, results):
                    score, error = math.nan, d.error or ""
                    if isinstance(result, str):
                        error = result
                    elif result is not None:
                        if math.isfinite(result):
                            score = float(result)
                        else:
                            error = f"the scorer returned {result} (not a finite number)"
                    rows.append({"path": str(path), "score": score, "error": error,
                                 "width": d.width, "height": d.height})
                    d.payload = None
                bar.update(len(batch))
                bar.set_postfix(failed=sum(bool(r["error"]) for r in rows))
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    df = pd.DataFrame(rows, columns=COLUMNS)
    df["score"] = df["score"].astype(float)
    df["error"] = df["error"].astype(str)
    for col in ("width", "height"):
        df[col] = df[col].astype("Int64")
    df.attrs.update(scorer=getattr(scorer, "name", type(scorer).__name__), weights=getattr(scorer, "weights", "unknown"))
    return df


def summarize(df: pd.DataFrame, threshold: float = PASS_THRESHOLD) -> dict:
    """Counts, mean/min/max and the competition verdict of a :func:`score_paths` frame.

    Returns ``n_scored, n_failed, mean, min, max, passes`` (mean >= ``threshold``), plus
    ``threshold``, ``scorer`` and ``weights`` (``offline-random`` scores mean nothing).
    Raises :class:`NothingScoredError` when no image was scored, with the reasons.
    """
    scored = df["score"].notna() & (df["error"].fillna("") == "")
    failed = df[~scored]
    if not scored.any():
        reasons = "; ".join(f"{Path(p).name}: {e}" for p, e in zip(failed["path"][:5], failed["error"][:5]))
        more = f" (and {len(failed) - 5} more)" if len(failed) > 5 else ""
        raise NothingScoredError(f"none of the {len(df)} file(s) could be scored, so there is no score "
                                 f"(not 0): {reasons}{more}")
    scores = df.loc[scored, "score"]
    mean = float(scores.mean())
    return {
        "n_scored": int(scored.sum()),
        "n_failed": int(len(failed)),
        "mean": mean,
        "min": float(scores.min()),
        "max": float(scores.max()),
        "passes": bool(mean >= threshold),
        "threshold": threshold,
        "scorer": df.attrs.get("scorer", "unknown"),
        "weights": df.attrs.get("weights", "unknown"),
    }


def verdict(summary: dict) -> str:
    """One line a person can read: mean, pass/fail against the threshold, and the weights."""
    word = "PASSES" if summary["passes"] else "DOES NOT QUALIFY"
    line = (f"mean {summary['mean']:.3f} over {summary['n_scored']} image(s) -> {word} "
            f"(needs >= {summary['threshold']:.1f})")
    if summary.get("n_failed"):
        line += f"; {summary['n_failed']} file(s) could not be scored"
    if summary.get("weights") != "real":
        line += f"  [weights: {summary.get('weights')}: this score means nothing]"
    return line


def write_scores_csv(df: pd.DataFrame, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a :func:`score_paths` frame as UTF-8 CSV atomically, with a ``weights`` column.

    Raises :class:`helpers.io.OutputExistsError` if ``path`` exists and not ``overwrite``.
    """
    from .io import atomic_path

    out = df.assign(weights=df.attrs.get("weights", "unknown"))
    with atomic_path(path, overwrite) as tmp:
        out.to_csv(tmp, index=False, encoding="utf-8")
    return Path(path)


def read_scores_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read a CSV written by :func:`write_scores_csv` back into a :func:`score_paths`-like frame."""
    df = pd.read_csv(path, dtype={"error": str}, keep_default_na=False, na_values={"score": [""]})
    df["score"] = pd.to_numeric(df["score"], errors="coerce")
    for col in ("width", "height"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
    if "weights" in df.columns:
        df.attrs["weights"] = str(df["weights"].iloc[0]) if len(df) else "unknown"
        df = df.drop(columns="weights")
    return df


def group_by_folder(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Split a frame by each file's folder (e.g. a recursive run over ``base/`` and ``lora/``)."""
    groups = {}
    for folder, part in df.groupby(df["path"].map(lambda p: str(Path(p).parent)), sort=False):
        part = part.copy()
        part.attrs = dict(df.attrs)
        groups[folder] = part
    return groups


__all__: Sequence[str] = [
    "PASS_THRESHOLD", "COMPETITION_SCORER", "IMAGE_EXTENSIONS", "COLUMNS", "Scorer", "NoImagesError",
    "NothingScoredError", "ImageLoadError", "open_rgb", "list_images", "CompetitionScorer",
    "load_competition_scorer", "score_paths", "summarize", "verdict", "write_scores_csv", "read_scores_csv",
    "group_by_folder",
]
