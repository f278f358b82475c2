"""Data-Juicer recipes: fill in a recipe, run it with Data-Juicer, read back what it kept and why.

The recipes are YAML files under ``data/recipes/`` in Data-Juicer's own config format,
plus an optional ``kit:`` section this module takes out before Data-Juicer sees the file
(training buckets, notes). Running them is Data-Juicer's job: :func:`run_recipe` calls
``data_juicer.config.init_configs`` and ``DefaultExecutor`` with the tracer on, so every
dropped sample is written, with the statistic that dropped it, to
``trace/sample_trace-<op>.jsonl``; :func:`analyze` runs Data-Juicer's ``Analyzer``, which
computes every filter's statistic for every sample without dropping any. Caches and logs
stay under the run folder, never in the repository.

About the aesthetic score scale: Data-Juicer's ``image_aesthetics_filter`` divides the
predictor's 1-10 score by 10 when the model *name* contains ``aesthetics-predictor``
(``need_normalized_by_ten``), and compares raw scores otherwise. The kit's recipes hold
thresholds on the divided 0-1 scale; :func:`aesthetic_threshold` converts a LAION-style
1-10 threshold to whatever scale Data-Juicer will use for the resolved model path, by
asking Data-Juicer's own operator. Taught in ``notebooks/02_data.ipynb``.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import yaml

from .paths import data_dir

RECIPES_DIR = data_dir() / "recipes"
AESTHETIC_PLACEHOLDER = "{aesthetic_model}"
STATS = "__dj__stats__"
# Data-Juicer's stats keys -> the kit's column names.
STAT_COLUMNS = {"image_width": "width", "image_height": "height", "aspect_ratios": "aspect_ratio",
                "image_aesthetics_scores": "aesthetic_dj"}
# Which statistic each filter decides on (for labels).
OP_STATS = {"image_shape_filter": ("width", "height"), "image_aspect_ratio_filter": ("aspect_ratio",),
            "image_aesthetics_filter": ("aesthetic",)}


def _import_dj(cache_root: Path):
    """Import Data-Juicer with its caches under ``cache_root`` (set before the first import)."""
    cache_root.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("DATA_JUICER_CACHE_HOME", str(cache_root / "data_juicer"))
    os.environ.setdefault("HF_DATASETS_CACHE", str(cache_root / "hf_datasets"))
    from data_juicer.config import init_configs
    from data_juicer.core import Analyzer, DefaultExecutor

    return init_configs, DefaultExecutor, Analyzer


def _setup_logs(run_dir: Path, quiet: bool) -> None:
    """Route Data-Juicer's log: warnings (or everything, ``quiet=False``) on screen, all of it in ``run_dir/dj.log``.

    Data-Juicer's own set-up would redirect ``sys.stdout`` into its logger and print a
    100-row config table; marking its logger as set up keeps a notebook's output readable.
    """
    from data_juicer.utils import logger_utils
    from loguru import logger

    logger_utils.LOGGER_SETUP = True
    logger.remove()
    logger.add(sys.stderr, level="WARNING" if quiet else "INFO",
               format="<level>{level}</level> data-juicer: {message}")
    logger.add(run_dir / "dj.log", level="INFO", enqueue=False)


def _init_configs(init_configs, path: Path, run_dir: Path):
    """``init_configs`` with its printed config table sent to ``run_dir/config_table.txt``."""
    import contextlib

    with open(run_dir / "config_table.txt", "w", encoding="utf-8") as f, contextlib.redirect_stdout(f):
        return init_configs(args=["--config", str(path)])


def list_recipes() -> list[str]:
    """Names of the recipes under ``data/recipes/``."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def load_recipe(name: str | os.PathLike) -> tuple[dict, dict]:
    """``(data_juicer_config, kit_section)`` of a recipe name (``data/recipes/<name>.yaml``) or path."""
    path = Path(name)
    if not path.suffix:
        path = RECIPES_DIR / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no recipe {path}; the kit has {list_recipes()}")
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    kit = config.pop("kit", None) or {}
    return config, kit


def recipe_ops(config: dict) -> list[tuple[str, dict]]:
    """The recipe's operators in order, as ``(name, params)``."""
    ops = []
    for entry in config.get("process", []):
        (name, params), = entry.items()
        ops.append((name, dict(params or {})))
    return ops


def dj_divides_by_ten(model_path: str | os.PathLike) -> bool:
    """True when Data-Juicer's ``image_aesthetics_filter`` divides this model's scores by 10.

    Asks Data-Juicer's own operator (its ``need_normalized_by_ten``), so the answer follows
    the installed version's rule. The model is not loaded.
    """
    from data_juicer.ops.filter.image_aesthetics_filter import ImageAestheticsFilter

    return bool(ImageAestheticsFilter(hf_scorer_model=str(model_path)).need_normalized_by_ten)


def aesthetic_threshold(score_1_to_10: float, model_path: str | os.PathLike) -> float:
    """A LAION-style threshold (1-10, as the competition's 6.0) on the scale Data-Juicer will compare."""
    return score_1_to_10 / 10.0 if dj_divides_by_ten(model_path) else score_1_to_10


def prepare_recipe(name: str | os.PathLike, dataset: str | os.PathLike, run_dir: str | os.PathLike, *,
                   aesthetic_model: str | os.PathLike | None = None, min_aesthetic: float | None = None,
                   overrides: dict[str, dict] | None = None, np: int = 1) -> tuple[Path, dict, dict]:
    """Write a runnable copy of recipe ``name`` into ``run_dir/recipe.yaml``.

    Fills in ``dataset_path``, ``export_path`` and ``work_dir`` (all under ``run_dir``),
    turns the tracer on for every sample, points ``image_aesthetics_filter`` at
    ``aesthetic_model`` and, when ``min_aesthetic`` (1-10 scale) is given, sets its
    ``min_score`` on Data-Juicer's scale for that model (:func:`aesthetic_threshold`).
    ``overrides`` maps an operator name to parameters that replace the recipe's.
    Returns ``(path, config, kit_section)``.
    """
    config, kit = load_recipe(name)
    config = copy.deepcopy(config)
    run_dir = Path(run_dir).resolve()
    config.update({
        "project_name": config.get("project_name") or Path(name).stem,
        "dataset_path": str(Path(dataset).resolve()),
        "export_path": str(run_dir / "result.jsonl"),
        "work_dir": str(run_dir),
        "np": np,
        "open_tracer": True,
        "trace_num": 10**9,  # every dropped sample, not the default 10
        "use_cache": False,
        "open_monitor": False,  # the monitor runs each operator in a child process; the tracer then misses some
        "auto_op_parallelism": False,  # use exactly `np` processes per operator
    })
    process = []
    for op, params in recipe_ops(config):
        params = {**params, **(overrides or {}).get(op, {})}
        params.setdefault("num_proc", np)
        if op == "image_aesthetics_filter":
            model = params.get("hf_scorer_model", "")
            if model == AESTHETIC_PLACEHOLDER:
                if aesthetic_model is None:
                    raise ValueError(f"recipe {name} needs aesthetic_model= (e.g. resolve_models(['aesthetic']).aesthetic)")
                params["hf_scorer_model"] = model = str(aesthetic_model)
            if min_aesthetic is not None:
                params["min_score"] = aesthetic_threshold(min_aesthetic, model)
            elif not dj_divides_by_ten(model) and params.get("max_score", 1.0) <= 1.0:
                raise ValueError(
                    f"Data-Juicer will compare raw 1-10 scores for {model} (its name lacks 'aesthetics-predictor'), "
                    f"but recipe {name} holds thresholds on the 0-1 scale; pass min_aesthetic= on the 1-10 scale")
            if not dj_divides_by_ten(model):
                params["max_score"] = max(float(params.get("max_score", 1.0)), 10.0)
        process.append({op: params})
    config["process"] = process
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a run folder is derived: re-running replaces it (tracer files append)
    run_dir.mkdir(parents=True)
    path = run_dir / "recipe.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path, config, kit


def _stats_row(sample: dict, divide: bool | None) -> dict:
    """One sample's record + stats as flat columns (first image's value for per-image lists)."""
    row = {"id": sample.get("id"), "image": (sample.get("image") or [None])[0], "text": sample.get("text")}
    for key, value in (sample.get(STATS) or {}).items():
        if isinstance(value, list):
            value = value[0] if value else None
        row[STAT_COLUMNS.get(key, key)] = value
    if "aesthetic_dj" in row and row["aesthetic_dj"] is not None:
        row["aesthetic"] = row["aesthetic_dj"] * 10.0 if divide else row["aesthetic_dj"]
    return row


@dataclass
class RecipeRun:
    """One Data-Juicer run: what went in, what was kept, what each operator dropped."""

    name: str
    run_dir: Path
    config: dict
    kit: dict
    ops: list[tuple[str, dict]]
    n_input: int
    kept: list[dict]
    dropped: dict[str, list[dict]]
    seconds: float
    aesthetic_divided_by_ten: bool | None = None
    notes: list[str] = field(default_factory=list)

    def table(self):
        """A DataFrame with one row per input sample: ``kept``, ``dropped_by`` and every statistic."""
        import pandas as pd

        rows = [{**_stats_row(s, self.aesthetic_divided_by_ten), "kept": True, "dropped_by": ""} for s in self.kept]
        for op, samples in self.dropped.items():
            rows += [{**_stats_row(s, self.aesthetic_divided_by_ten), "kept": False, "dropped_by": op} for s in samples]
        return pd.DataFrame(rows)

    def counts(self):
        """Per operator, in order: samples in, dropped, left (the funnel of this recipe)."""
        import pandas as pd

        rows, left = [], self.n_input
        for op, params in self.ops:
            dropped = len(self.dropped.get(op, []))
            rows.append({"recipe": self.name, "operator": op, "in": left, "dropped": dropped, "left": left - dropped,
                         "settings": ", ".join(f"{k}={v}" for k, v in params.items()
                                               if k not in {"num_proc", "hf_scorer_model"})})
            left -= dropped
        return pd.DataFrame(rows)


def _count_lines(path: Path) -> int:
    with open(path, encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


def run_recipe(name: str | os.PathLike, dataset: str | os.PathLike, run_dir: str | os.PathLike, *,
               aesthetic_model: str | os.PathLike | None = None, min_aesthetic: float | None = None,
               overrides: dict[str, dict] | None = None, np: int = 1, quiet: bool = True) -> RecipeRun:
    """Run recipe ``name`` on ``dataset`` (a Data-Juicer ``metadata.jsonl``) with Data-Juicer.

    Uses ``init_configs`` + ``DefaultExecutor`` (what ``dj-process --config`` does). Kept
    samples come back with their stats; dropped ones are read from the tracer's files, so
    each carries the operator that dropped it and the statistic it was dropped on.
    ``run_dir`` is replaced on every run. Taught in ``notebooks/02_data.ipynb``.
    """
    run_dir = Path(run_dir).resolve()
    init_configs, DefaultExecutor, _ = _import_dj(run_dir.parent / "dj_cache")
    path, config, kit = prepare_recipe(name, dataset, run_dir, aesthetic_model=aesthetic_model,
                                       min_aesthetic=min_aesthetic, overrides=overrides, np=np)
    ops = recipe_ops(config)
    start = time.perf_counter()
    _setup_logs(run_dir, quiet)
    cfg = _init_configs(init_configs, path, run_dir)
    kept_ds = DefaultExecutor(cfg).run()
    seconds = time.perf_counter() - start
    kept = kept_ds.to_list()
    dropped = {}
    for op, _ in ops:
        traces = list(run_dir.rglob(f"sample_trace-{op}.jsonl"))
        dropped[op] = [json.loads(line) for t in traces for line in t.read_text(encoding="utf-8").splitlines() if line.strip()]
    aesthetic_ops = [p for op, p in ops if op == "image_aesthetics_filter"]
    divided = dj_divides_by_ten(aesthetic_ops[0]["hf_scorer_model"]) if aesthetic_ops else None
    run = RecipeRun(name=Path(name).stem, run_dir=run_dir, config=config, kit=kit, ops=ops,
                    n_input=_count_lines(Path(dataset)), kept=kept, dropped=dropped, seconds=seconds,
                    aesthetic_divided_by_ten=divided)
    _attribute_untraced(run, Path(dataset))
    return run


def _attribute_untraced(run: RecipeRun, dataset: Path) -> None:
    """Samples dropped but missing from the tracer's files (Data-Juicer 1.6.1 writes no trace for
    ``image_aesthetics_filter`` here) are attributed to the one operator without a trace file, by
    elimination, and said so in ``run.notes``; with several candidates they are only counted."""
    from .dataset import read_jsonl

    def key(sample: dict) -> str:
        return (sample.get("image") or [""])[0]

    seen = {key(s) for s in run.kept} | {key(s) for v in run.dropped.values() for s in v}
    missing = [s for s in read_jsonl(dataset) if key(s) not in seen]
    if not missing:
        return
    untraced_ops = [op for op, _ in run.ops if not run.dropped.get(op)]
    if len(untraced_ops) == 1:
        op = untraced_ops[0]
        run.dropped[op] = missing
        run.notes.append(f"{len(missing)} samples dropped without a trace; attributed to {op} by elimination "
                         "(their statistics come from the analysis pass)")
    else:
        run.notes.append(f"{len(missing)} samples are neither kept nor traced; see the logs in {run.run_dir}")


def analyze(dataset: str | os.PathLike, run_dir: str | os.PathLike, recipes: Sequence[str], *,
            aesthetic_model: str | os.PathLike | None = None, np: int = 1, quiet: bool = True):
    """Every statistic of every sample, from Data-Juicer's ``Analyzer`` (``dj-analyze``): a DataFrame.

    The operators are the union of those in ``recipes`` (thresholds do not matter: the
    Analyzer computes stats and drops nothing). Its own plots and ``overall.csv`` are written
    under ``run_dir``. ``aesthetic`` is on the 1-10 scale whatever Data-Juicer's scale was.
    """
    import pandas as pd

    run_dir = Path(run_dir).resolve()
    init_configs, _, Analyzer = _import_dj(run_dir.parent / "dj_cache")
    seen: dict[str, dict] = {}
    config: dict = {}
    for name in recipes:
        cfg, _ = load_recipe(name)
        config = config or cfg
        for op, params in recipe_ops(cfg):
            seen.setdefault(op, params)
    if "image_aesthetics_filter" in seen and aesthetic_model is None:
        seen.pop("image_aesthetics_filter")
    merged = {**config, "project_name": "analysis", "process": [{op: p} for op, p in seen.items()]}
    tmp_recipe = run_dir.parent / f".{run_dir.name}.recipe.yaml"
    tmp_recipe.parent.mkdir(parents=True, exist_ok=True)
    tmp_recipe.write_text(yaml.safe_dump(merged, allow_unicode=True, sort_keys=False), encoding="utf-8")
    path, config, _ = prepare_recipe(tmp_recipe, dataset, run_dir, aesthetic_model=aesthetic_model, np=np)
    tmp_recipe.unlink()
    _setup_logs(run_dir, quiet)
    cfg = _init_configs(init_configs, path, run_dir)
    ds = Analyzer(cfg).run()
    divided = dj_divides_by_ten(aesthetic_model) if aesthetic_model is not None else None
    return pd.DataFrame([_stats_row(s, divided) for s in ds.to_list()])


def drop_reason(row, ops: dict[str, dict]) -> str:
    """A short label: the operator that dropped a sample and the statistic against its threshold."""
    op = row["dropped_by"]
    p = ops.get(op, {})
    if op == "image_shape_filter":
        return f"shape: {int(row['width'])}x{int(row['height'])} < {p.get('min_width', 1)}x{p.get('min_height', 1)}"
    if op == "image_aspect_ratio_filter":
        return f"aspect: {row['aspect_ratio']:.2f} not in [{p.get('min_ratio')}, {p.get('max_ratio')}]"
    if op == "image_aesthetics_filter":
        return f"aesthetic: {row.get('aesthetic_dj', float('nan')):.3g} < {p.get('min_score')}"
    return op


def contact_sheet(rows, labels: Sequence[str], columns: int = 6, thumb: int = 160):
    """A grid of thumbnails (``rows["image"]``) with a label under each; returns a matplotlib Figure."""
    import math

    import matplotlib.pyplot as plt
    from PIL import Image

    paths = list(rows["image"])
    n = max(1, len(paths))
    ncols = min(columns, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * thumb / 60, nrows * thumb / 55), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, path, label in zip(axes.flat, paths, labels):
        with Image.open(path) as im:
            im.thumbnail((thumb * 2, thumb * 2))
            ax.imshow(im.convert("RGB"))
        ax.set_title(f"{Path(path).stem}\n{label}", fontsize=7)
    fig.tight_layout()
    return fig
