"""Model resolution: real weights when they are here, the offline random set otherwise.

Every notebook asks for its models through :func:`resolve_models` and gets paths it
hands to the real loaders (DiffSynth's ``ModelManager``, ``from_pretrained``). Which
weights stand behind those paths is decided here, once, and said loudly:

- ``KOLORS_KIT_WEIGHTS=auto`` (default): real weights under ``models/`` where present,
  the offline random set for whatever is missing. Never touches the network.
- ``KOLORS_KIT_WEIGHTS=real``: real weights only; missing ones are downloaded from
  ModelScope (``diffsynth.download_models`` / ``snapshot_download``). If that fails you
  get an error that says what to run, never a silent fallback.
- ``KOLORS_KIT_WEIGHTS=offline``: the offline random set, even if real weights exist.

Taught in ``notebooks/00_setup.ipynb``. Command line: ``python -m helpers.models --help``.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from . import offline
from .paths import models_dir

WEIGHTS_ENV = "KOLORS_KIT_WEIGHTS"
OFFLINE_CLIP_ENV = "KOLORS_KIT_OFFLINE_CLIP"
REAL = "real"
OFFLINE = "offline-random"
OFFLINE_DIRNAME = "offline-random"


@dataclass(frozen=True)
class ModelSpec:
    """One model the course uses: where it comes from and where it lives under ``models/``."""

    key: str
    description: str
    source: str  # ModelScope id (or DiffSynth preset name)
    relpath: str  # path under the models folder, as DiffSynth / snapshot_download lay it out
    weight_globs: tuple[str, ...] = ()  # in a folder: files that must exist besides config.json


SPECS: dict[str, ModelSpec] = {
    spec.key: spec
    for spec in [
        ModelSpec("text_encoder", "Kolors text encoder (ChatGLM3-6B)", "Kwai-Kolors/Kolors",
                  "kolors/Kolors/text_encoder", ("pytorch_model*.bin", "*.safetensors")),
        ModelSpec("unet", "Kolors UNet", "Kwai-Kolors/Kolors",
                  "kolors/Kolors/unet/diffusion_pytorch_model.safetensors"),
        ModelSpec("vae", "Kolors VAE (SDXL)", "Kwai-Kolors/Kolors",
                  "kolors/Kolors/vae/diffusion_pytorch_model.safetensors"),
        ModelSpec("fp16_vae", "SDXL VAE fp16-fix (for fp16 training)", "SDXL-vae-fp16-fix",
                  "sdxl-vae-fp16-fix/diffusion_pytorch_model.safetensors"),
        ModelSpec("aesthetic", "Competition aesthetic predictor (CLIP ViT-L/14 + linear head)",
                  "AI-ModelScope/aesthetics-predictor-v2-sac-logos-ava1-l14-linearMSE",
                  "aesthetics-predictor-v2-sac-logos-ava1-l14-linearMSE", ("*.safetensors", "*.bin")),
    ]
}
KOLORS = ("text_encoder", "unet", "vae", "fp16_vae")
ALL = (*KOLORS, "aesthetic")


class RealWeightsUnavailable(RuntimeError):
    """Real weights were asked for but are absent and could not be downloaded."""


@dataclass(frozen=True)
class ResolvedModels:
    """Paths to hand to the loaders, and which kind of weights stand behind each."""

    paths: dict[str, Path]
    sources: dict[str, str]  # key -> "real" | "offline-random"
    root: Path
    notes: tuple[str, ...] = field(default_factory=tuple)

    def __getattr__(self, key: str) -> Path:
        try:
            return self.__dict__["paths"][key]
        except KeyError:
            raise AttributeError(f"model {key!r} was not resolved; ask resolve_models(parts=[..., {key!r}])") from None

    @property
    def weights(self) -> str:
        """``real`` only when every resolved model is real; otherwise ``offline-random``."""
        return REAL if all(s == REAL for s in self.sources.values()) else OFFLINE

    @property
    def offline(self) -> bool:
        return self.weights == OFFLINE

    def kolors_files(self, vae: str = "vae") -> list[str]:
        """The three paths ``ModelManager(file_path_list=...)`` needs: text encoder, UNet, VAE.

        ``vae="fp16_vae"`` picks the SDXL fp16-fix VAE, which training in fp16 needs.
        """
        return [str(self.paths["text_encoder"]), str(self.paths["unet"]), str(self.paths[vae])]

    def record(self) -> dict:
        """What to write into every output made with these models."""
        return {
            "weights": self.weights,
            "models": {key: {"weights": self.sources[key], "path": str(path)} for key, path in self.paths.items()},
        }

    def banner(self) -> str:
        """A loud, multi-line notice when any model is offline random; a one-liner otherwise."""
        if not self.offline:
            return f"weights: real ({', '.join(self.paths)}) from {self.root}"
        fake = [k for k, s in self.sources.items() if s == OFFLINE]
        line = "!" * 78
        lines = [
            line,
            "!! OFFLINE RANDOM WEIGHTS: " + ", ".join(fake),
            "!! These models are randomly initialised stand-ins with the real classes and files.",
            "!! Everything runs, but images, scores and losses made with them mean nothing.",
            "!! Outputs are labelled 'weights: offline-random'.",
            f"!! For real weights: run `make models` (or set {WEIGHTS_ENV}=real) on a machine with internet.",
            *("!! " + note for note in self.notes),
            line,
        ]
        return "\n".join(lines)


def weights_mode(mode: str | None = None) -> str:
    """The requested mode: argument, else ``$KOLORS_KIT_WEIGHTS``, else ``auto``."""
    mode = (mode or os.environ.get(WEIGHTS_ENV) or "auto").strip().lower()
    aliases = {"offline-random": "offline", "random": "offline"}
    mode = aliases.get(mode, mode)
    if mode not in {"auto", "real", "offline"}:
        raise ValueError(f"{WEIGHTS_ENV}={mode!r} is not one of auto, real, offline")
    return mode


def is_present(spec: ModelSpec, path: Path) -> bool:
    """True when real weights for ``spec`` are complete at ``path`` (not an offline build)."""
    if path.suffix:  # a single weights file
        return path.is_file() and path.stat().st_size > 0 and not offline.marker_path(path).exists()
    if not (path / "config.json").is_file() or offline.marker_path(path).exists():
        return False
    return any(any(path.glob(pattern)) for pattern in spec.weight_globs)


def download_real(keys: Iterable[str], root: Path) -> None:
    """Fetch real weights from ModelScope into ``root`` with DiffSynth's and ModelScope's downloaders.

    The Kolors files come from DiffSynth's own preset lists (the ones ``download_models``
    uses), placed under ``root`` instead of ``./models``.
    """
    keys = set(keys)
    presets = (["Kolors"] if keys & {"text_encoder", "unet", "vae"} else []) + \
              (["SDXL-vae-fp16-fix"] if "fp16_vae" in keys else [])
    if presets:
        from diffsynth.configs.model_config import preset_models_on_modelscope
        from diffsynth.models.downloader import download_customized_models

        for preset in presets:
            files = preset_models_on_modelscope[preset]
            files = files["file_list"] if isinstance(files, dict) else files
            for model_id, origin_file, local_dir in files:
                target = root / Path(local_dir).relative_to("models")
                download_customized_models(model_id, origin_file, str(target), downloading_priority=["ModelScope"])
    if "aesthetic" in keys:
        from modelscope import snapshot_download

        spec = SPECS["aesthetic"]
        snapshot_download(spec.source, local_dir=str(root / spec.relpath))


def resolve_models(parts: Iterable[str] = ALL, mode: str | None = None, *, seed: int = 0,
                   offline_clip: str | None = None, root: Path | None = None,
                   verbose: bool = True) -> ResolvedModels:
    """Resolve the models in ``parts`` (keys of :data:`SPECS`) to paths on disk.

    Real weights under ``models/`` are used where present; otherwise (``auto``/``offline``)
    the offline random set is built once under ``models/offline-random/`` (a progress bar,
    then cached) and used. ``offline_clip`` ("small" or "full", default
    ``$KOLORS_KIT_OFFLINE_CLIP`` or "small") sizes the offline aesthetic predictor's tower.

    Raises :class:`RealWeightsUnavailable` when ``mode="real"`` and a model is neither on
    disk nor downloadable.
    """
    parts = tuple(parts)
    unknown = [p for p in parts if p not in SPECS]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; choose from {list(SPECS)}")
    mode = weights_mode(mode)
    root = Path(root) if root is not None else models_dir()
    clip = (offline_clip or os.environ.get(OFFLINE_CLIP_ENV) or "small").lower()
    if clip not in {"small", "full"}:
        raise ValueError(f"offline_clip={clip!r} is not 'small' or 'full'")

    real_paths = {k: root / SPECS[k].relpath for k in parts}
    offline_root = root / OFFLINE_DIRNAME
    offline_paths = {k: offline_root / SPECS[k].relpath for k in parts}
    if clip == "full" and "aesthetic" in parts:
        offline_paths["aesthetic"] = offline_root / "full-size" / SPECS["aesthetic"].relpath

    paths, sources, notes = {}, {}, []
    missing = [k for k in parts if not is_present(SPECS[k], real_paths[k])]
    if mode == "real" and missing:
        try:
            download_real(missing, root)
        except Exception as exc:  # network, auth, disk: all mean the same to the learner
            raise RealWeightsUnavailable(
                f"Real weights for {', '.join(missing)} are not under {root} and could not be downloaded "
                f"({type(exc).__name__}: {exc}). On a machine with internet run `make models`; "
                f"or set {WEIGHTS_ENV}=offline to run the course on the offline random set."
            ) from exc
        missing = [k for k in parts if not is_present(SPECS[k], real_paths[k])]
        if missing:
            raise RealWeightsUnavailable(f"Download finished but {missing} are still incomplete under {root}; "
                                         "delete the partial folders and run `make models` again.")
    for key in parts:
        if mode != "offline" and key not in missing:
            paths[key], sources[key] = real_paths[key], REAL
        else:
            paths[key], sources[key] = offline_paths[key], OFFLINE
    to_build = {k: p for k, p in paths.items() if sources[k] == OFFLINE}
    if to_build:
        built = offline.build_missing(to_build, seed=seed, clip=clip, lock_dir=offline_root)
        if built:
            notes.append("built now: " + ", ".join(f"{k} {s:.0f}s" for k, s in built.items()))
        if mode == "auto":
            notes.append(f"real weights not found for: {', '.join(to_build)} (looked under {root})")
    resolved = ResolvedModels(paths=paths, sources=sources, root=root, notes=tuple(notes))
    if verbose:
        print(resolved.banner(), flush=True)
    return resolved


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m helpers.models", description=__doc__.split("\n")[0])
    parser.add_argument("--resolve", action="store_true", help="resolve (download or build) the models and print where they are")
    parser.add_argument("--parts", nargs="+", default=list(ALL), choices=list(SPECS), help="which models (default: all)")
    parser.add_argument("--mode", choices=["auto", "real", "offline"], default=None,
                        help=f"which weights (default: ${WEIGHTS_ENV} or auto)")
    parser.add_argument("--offline-clip", choices=["small", "full"], default=None,
                        help="size of the offline aesthetic predictor's CLIP tower")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.resolve:
        for key, spec in SPECS.items():
            print(f"{key:13s} {spec.description}  <- {spec.source}  [{spec.relpath}]")
        return 0
    try:
        resolved = resolve_models(args.parts, args.mode, offline_clip=args.offline_clip)
    except RealWeightsUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for key, path in resolved.paths.items():
        print(f"{key:13s} {resolved.sources[key]:15s} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
