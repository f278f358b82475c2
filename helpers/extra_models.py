"""Resolution for the models beyond the competition's judge (05_beyond_scoring).

The same rule as :func:`helpers.models.resolve_models`, for the V2.5 predictor, the CLIP
used by the preference reward and the Qwen2-VL level scorer: real weights under
``models/<relpath>`` when present (``KOLORS_KIT_WEIGHTS=auto|real``), otherwise an offline
random stand-in of the *same classes*, built once under ``models/offline-random/<relpath>``,
marked with ``OFFLINE_RANDOM_WEIGHTS.json`` and announced with a banner. ``real`` mode tries
the download and, failing that, raises an error that says what to do; never a silent fallback.

Taught in ``notebooks/05_beyond_scoring.ipynb``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from . import offline
from .models import OFFLINE, OFFLINE_DIRNAME, REAL, WEIGHTS_ENV, RealWeightsUnavailable, weights_mode
from .paths import models_dir


@dataclass(frozen=True)
class ExtraSpec:
    """One extra model: its description, where the real one comes from, where it lives."""

    key: str
    description: str
    source: str
    relpath: str
    is_complete: Callable[[Path], bool]
    build_offline: Callable[[Path, int], None]
    download: Callable[[Path], None] | None = None
    builder_version: int = 1


@dataclass(frozen=True)
class Resolved:
    """A resolved extra model: its folder and which weights stand behind it."""

    key: str
    path: Path
    weights: str  # "real" | "offline-random"

    def record(self) -> dict:
        return {"weights": self.weights, "models": {self.key: {"weights": self.weights, "path": str(self.path)}}}


def _banner(spec: ExtraSpec, path: Path, built: float | None) -> str:
    line = "!" * 78
    return "\n".join([
        line,
        f"!! OFFLINE RANDOM WEIGHTS: {spec.key} ({spec.description})",
        "!! A randomly initialised stand-in with the real classes and files: it runs, its scores mean nothing.",
        "!! Outputs are labelled 'weights: offline-random'.",
        f"!! Real weights: {spec.source} into {models_dir() / spec.relpath} (or {WEIGHTS_ENV}=real with internet).",
        *([f"!! built now in {built:.0f}s at {path}"] if built is not None else []),
        line,
    ])


def _is_built(path: Path, version: int) -> bool:
    marker = path / offline.MARKER
    try:
        return path.is_dir() and json.loads(marker.read_text()).get("builder_version") == version
    except (OSError, ValueError):
        return False


def resolve_extra(spec: ExtraSpec, mode: str | None = None, seed: int = 0, verbose: bool = True) -> Resolved:
    """Resolve one extra model to a folder (see the module docstring for the rule)."""
    mode = weights_mode(mode)
    real = models_dir() / spec.relpath
    marker_here = (real / offline.MARKER).exists()
    if mode != "offline" and real.is_dir() and not marker_here and spec.is_complete(real):
        if verbose:
            print(f"weights: real ({spec.key}) from {real}", flush=True)
        return Resolved(spec.key, real, REAL)
    if mode == "real":
        try:
            if spec.download is None:
                raise RuntimeError("no automatic download for this model")
            spec.download(real)
        except Exception as exc:  # network, auth, disk: all mean the same to the learner
            raise RealWeightsUnavailable(
                f"Real weights for {spec.key} are not at {real} and could not be downloaded ({type(exc).__name__}: {exc}). "
                f"Put {spec.source} there on a machine with internet, or set {WEIGHTS_ENV}=offline.") from exc
        if not spec.is_complete(real):
            raise RealWeightsUnavailable(f"download of {spec.key} finished but {real} is incomplete; delete it and retry")
        return Resolved(spec.key, real, REAL)
    path = models_dir() / OFFLINE_DIRNAME / spec.relpath
    built = None
    if not _is_built(path, spec.builder_version):
        start = time.perf_counter()
        tmp = offline._fresh_dir(path)
        spec.build_offline(tmp, seed)
        (tmp / offline.MARKER).write_text(json.dumps({
            "weights": OFFLINE, "model": spec.key, "seed": seed, "builder_version": spec.builder_version,
            "torch": torch.__version__, "note": "Randomly initialised. Outputs made with these weights mean nothing.",
        }, indent=2))
        offline._finish(tmp, path)
        built = time.perf_counter() - start
    if verbose:
        print(_banner(spec, path, built), flush=True)
    return Resolved(spec.key, path, OFFLINE)


def pick_device(device: str | None = None) -> str:
    """``device`` if given, else ``cuda`` when available, else ``cpu``."""
    return device or ("cuda" if torch.cuda.is_available() else "cpu")
