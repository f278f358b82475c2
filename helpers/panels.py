"""Generating a storyboard's panels with DiffSynth's Kolors pipeline: seeded, resumable, recorded.

Each run writes ``<outputs>/<storyboard>/<run>/`` with one PNG per scene and a
``manifest.json`` saying how they were made: prompts, seeds, model files, LoRA (and its
metadata), settings, and ``weights: real | offline-random``. Running again with the same
settings skips the panels that exist (so an interrupted run resumes); running with
different settings into the same folder is refused rather than mixing two runs, unless
``overwrite=True``. :func:`compare_runs` puts two scored runs (base and LoRA) side by side.
Taught in ``notebooks/04_comic_strip.ipynb``.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .io import OutputExistsError, save_image, write_json
from .models import ResolvedModels
from .paths import outputs_dir as default_outputs_dir
from .storyboard import Scene, Storyboard

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


def run_dir(storyboard: Storyboard, run_name: str, outputs_dir: str | Path | None = None) -> Path:
    """``<outputs>/<storyboard name>/<run name>/``: where one run's panels and manifest go."""
    if not run_name or "/" in run_name or run_name.startswith("."):
        raise ValueError(f"run name {run_name!r} must be a plain folder name, e.g. 'base' or 'lora-s1.0'")
    return Path(outputs_dir or default_outputs_dir()) / storyboard.name / run_name


def panel_name(scene: Scene) -> str:
    """The panel's file name: ``panel_01.png`` for scene 1."""
    return f"panel_{scene.number:02d}.png"


def find_lora(outputs_dir: str | Path | None = None, run: str | None = None) -> Path:
    """The LoRA notebook 03 trained: ``<outputs>/lora/<run>/lora.safetensors`` (newest run if not named)."""
    root = Path(outputs_dir or default_outputs_dir()) / "lora"
    if run:
        path = root / run / "lora.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"no LoRA at {path}; runs under {root}: "
                                    f"{sorted(p.parent.name for p in root.glob('*/lora.safetensors'))}")
        return path
    found = sorted(root.glob("*/lora.safetensors"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"no trained LoRA under {root}: run notebooks/03_train_lora.ipynb first "
                                "(it writes <outputs>/lora/<run>/lora.safetensors), or pass lora_path")
    return found[-1]


def lora_record(path: str | Path, scale: float = 1.0) -> dict[str, Any]:
    """What a manifest says about a LoRA: its path, the scale used and the metadata in the file."""
    from .lora import read_lora_metadata  # helpers.lora (notebook 03) reads the safetensors header

    path = Path(path)
    return {"path": str(path.resolve()), "scale": float(scale), "bytes": path.stat().st_size,
            "metadata": read_lora_metadata(path)}


def _versions() -> dict[str, str]:
    out = {}
    for name in ("diffsynth", "torch"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


def plan_run(storyboard: Storyboard, models: ResolvedModels, *, width: int = 1024, height: int = 1024,
             steps: int = 50, cfg: float = 4.0, lora: dict | None = None, device: str | None = None,
             dtype: str | None = None) -> dict[str, Any]:
    """The manifest of a run before any panel exists: everything that decides what the panels look like."""
    scenes = []
    for scene in storyboard.scenes:
        scenes.append({"number": scene.number, "file": panel_name(scene), "caption": scene.caption,
                       "positive": scene.positive, "negative": scene.negative,
                       **scene.settings(width, height, steps, cfg)})
    record = models.record()
    return {
        "manifest_version": MANIFEST_VERSION,
        "weights": record["weights"],
        "storyboard": {"name": storyboard.name, "title": storyboard.title,
                       "path": str(storyboard.path) if storyboard.path else None},
        "models": record["models"],
        "pipeline": {"class": "diffsynth.SDXLImagePipeline", "device": device, "dtype": dtype, **_versions()},
        "lora": lora,
        "settings": {"width": width, "height": height, "steps": steps, "cfg": float(cfg)},
        "scenes": scenes,
    }


# what must match for a run folder to be resumed (the rest is bookkeeping)
_PLAN_KEYS = ("weights", "storyboard", "models", "lora", "settings", "scenes")


def _differences(old: dict, new: dict) -> list[str]:
    diffs = []
    for key in _PLAN_KEYS:
        if key == "storyboard":
            a, b = ({k: v for k, v in (d.get(key) or {}).items() if k != "path"} for d in (old, new))
        else:
            a, b = old.get(key), new.get(key)
        if json.loads(json.dumps(a, default=str)) != json.loads(json.dumps(b, default=str)):
            diffs.append(key)
    return diffs


def panel_stats(image) -> dict[str, Any]:
    """Mean and spread of a panel's pixels; ``constant`` is true for a flat (NaN, black, grey) image."""
    pixels = np.asarray(image, dtype=np.float32)
    finite = bool(np.isfinite(pixels).all())
    std = float(pixels.std()) if finite else float("nan")
    return {"mean": round(float(pixels.mean()), 3), "std": round(std, 3), "finite": finite,
            "constant": (not finite) or std < 0.5}


@dataclass
class RunResult:
    """What :func:`generate_panels` did: the run folder, every panel path, and which were made now."""

    folder: Path
    manifest: dict
    panels: list[Path]
    generated: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def weights(self) -> str:
        return self.manifest["weights"]

    def __repr__(self) -> str:
        return (f"RunResult({self.folder}, {len(self.panels)} panels: {len(self.generated)} generated, "
                f"{len(self.skipped)} skipped, {self.seconds:.1f} s, weights: {self.weights})")


def load_manifest(folder: str | Path) -> dict:
    """Read a run folder's ``manifest.json``."""
    return json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))


def generate_panels(pipe, storyboard: Storyboard, folder: str | Path, models: ResolvedModels, *,
                    width: int = 1024, height: int = 1024, steps: int = 50, cfg: float = 4.0,
                    lora: dict | None = None, overwrite: bool = False, progress: bool = True,
                    step_progress: bool = False) -> RunResult:
    """Generate every scene of ``storyboard`` into ``folder`` with a DiffSynth ``SDXLImagePipeline``.

    Per scene this is the baseline's call, with the scene's own seed::

        pipe(prompt=scene.positive, negative_prompt=scene.negative, cfg_scale=cfg,
             num_inference_steps=steps, height=height, width=width, seed=scene.seed)

    ``lora`` is the :func:`lora_record` of the LoRA already applied to ``pipe`` (None: base model);
    it goes into the manifest. Panels already in ``folder`` from a run with the same settings are
    skipped; a folder made with other settings raises :class:`~helpers.io.OutputExistsError`
    unless ``overwrite=True`` (which regenerates every panel). One progress bar per run, a
    panel per step; ``step_progress=True`` adds DiffSynth's own per-step bar.
    """
    folder = Path(folder)
    plan = plan_run(storyboard, models, width=width, height=height, steps=steps, cfg=cfg, lora=lora,
                    device=str(getattr(pipe, "device", None)), dtype=str(getattr(pipe, "torch_dtype", None)))
    manifest_path = folder / MANIFEST
    status: dict[str, Any] = {}
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if manifest_path.exists() and not overwrite:
        old = load_manifest(folder)
        diffs = _differences(old, plan)
        if diffs:
            raise OutputExistsError(
                f"{folder} holds a run made with different {', '.join(diffs)}; choose another run name, "
                "or pass overwrite=True to regenerate every panel there")
        status, created = old.get("panels", {}), old.get("created", created)
    elif not overwrite and folder.exists() and any(folder.glob("panel_*.png")):
        raise OutputExistsError(f"{folder} has panels but no {MANIFEST}, so they cannot be resumed safely; "
                                "choose another run name, or pass overwrite=True")
    folder.mkdir(parents=True, exist_ok=True)

    def write_manifest() -> None:
        write_json(manifest_path, {**plan, "created": created,
                                   "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                   "panels": status}, overwrite=True)

    inner = partial(tqdm, desc="steps", leave=False) if step_progress else (lambda steps_: steps_)
    result = RunResult(folder=folder, manifest=plan, panels=[folder / panel_name(s) for s in storyboard.scenes])
    start = time.perf_counter()
    bar = tqdm(storyboard.scenes, desc=f"{storyboard.name}/{folder.name}", unit="panel", disable=not progress)
    for scene, path in zip(bar, result.panels):
        if path.exists() and not overwrite:
            result.skipped.append(scene.number)
            continue
        s = scene.settings(width, height, steps, cfg)
        bar.set_postfix_str(f"scene {scene.number} seed {s['seed']}")
        t0 = time.perf_counter()
        image = pipe(prompt=scene.positive, negative_prompt=scene.negative, cfg_scale=s["cfg"],
                     num_inference_steps=s["steps"], height=s["height"], width=s["width"], seed=s["seed"],
                     progress_bar_cmd=inner)
        seconds = time.perf_counter() - t0
        stats = panel_stats(image)
        if stats["constant"]:
            warnings.warn(f"scene {scene.number}: the panel is a flat image (std {stats['std']}); "
                          + ("expected now and then with offline random weights"
                             if plan["weights"] != "real" else
                             "with fp16 this is usually a VAE overflow: use the fp16-fix VAE or bf16"), stacklevel=2)
        save_image(image, path, overwrite=overwrite)
        status[path.name] = {"seconds": round(seconds, 2), **stats,
                             "made": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        result.generated.append(scene.number)
        write_manifest()  # after every panel, so an interrupted run knows what it made
    bar.close()
    if not manifest_path.exists():
        write_manifest()
    result.seconds = time.perf_counter() - start
    result.manifest = load_manifest(folder)
    return result


# --- comparing two scored runs --------------------------------------------------------------

def compare_runs(storyboard: Storyboard, scores: dict[str, Any], threshold: float = 6.0):
    """Per-scene scores of several runs side by side (a pandas DataFrame) and a verdict dict.

    ``scores`` maps a run label (e.g. ``"base"``, ``"LoRA"``) to that run's
    ``helpers.scoring.score_paths`` DataFrame (panels in scene order). The first label is the
    reference; ``delta`` columns are each other run minus it. The verdict gives each run's mean,
    whether it reaches ``threshold`` (the competition's 6.0), the panels where each run wins, and
    the panels that failed to score.
    """
    import pandas as pd

    labels = list(scores)
    if len(labels) < 2:
        raise ValueError("compare_runs needs at least two runs, e.g. {'base': ..., 'LoRA': ...}")
    table = pd.DataFrame({"scene": [s.number for s in storyboard.scenes],
                          "caption": [s.caption for s in storyboard.scenes]})
    for label, df in scores.items():
        if len(df) != len(storyboard):
            raise ValueError(f"run {label!r} has {len(df)} scores for {len(storyboard)} scenes")
        table[label] = df["score"].to_numpy(dtype=float)
    ref = labels[0]
    for label in labels[1:]:
        table[f"{label} - {ref}"] = table[label] - table[ref]
    best = table[labels].idxmax(axis=1, skipna=True).where(table[labels].notna().any(axis=1))
    table["best"] = best
    verdict: dict[str, Any] = {"threshold": threshold, "runs": {}}
    for label in labels:
        col = table[label]
        mean = float(col.mean()) if col.notna().any() else None
        verdict["runs"][label] = {
            "mean": mean, "min": float(col.min()) if mean is not None else None,
            "max": float(col.max()) if mean is not None else None,
            "passes": bool(mean is not None and mean >= threshold),
            "panels_best": [int(n) for n in table.loc[table["best"] == label, "scene"]],
            "panels_failed": [int(n) for n in table.loc[col.isna(), "scene"]],
        }
    means = {k: v["mean"] for k, v in verdict["runs"].items() if v["mean"] is not None}
    verdict["best_mean"] = max(means, key=means.get) if means else None
    lines = [f"{label}: mean {v['mean']:.3f} ({'passes' if v['passes'] else 'below'} {threshold}), "
             f"best on {len(v['panels_best'])}/{len(storyboard)} panels"
             if v["mean"] is not None else f"{label}: no panel scored"
             for label, v in verdict["runs"].items()]
    verdict["summary"] = "; ".join(lines)
    return table, verdict
