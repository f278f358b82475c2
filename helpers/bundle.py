"""Reproducibility bundle: everything needed to make a submission's panels again, and the check.

The competition asks that the LoRA, prompts and seeds reproduce the submitted images.
:func:`make_bundle` packs one panel run (a folder written by
:func:`helpers.panels.generate_panels`) into one folder::

    <bundle>/
      bundle.json        what is inside, sha256 of every file, library versions, the tolerance
      manifest.json      the run's own manifest (prompts, seeds, models, LoRA, settings, weights)
      storyboard.yaml    the scenes exactly as they were generated (prompts, seeds, per-scene settings)
      seeds.csv          panel, file, seed, width, height, steps, cfg: for a person to read
      lora/lora.safetensors + lora/metadata.json   (when the run used a LoRA)
      panels/panel_01.png ...                      the submitted images

:func:`check_bundle` loads the Kolors pipeline (or takes yours), puts the bundle's LoRA on it at
the recorded scale, regenerates every panel with :func:`helpers.panels.generate_panels` and
reports, per panel, the max and mean absolute pixel difference (0-255) against the submitted
image. A panel matches when ``mean_abs <= mean_tolerance`` and ``max_abs <= max_tolerance``.
On the same hardware, precision and library versions the difference is exactly 0 (seeded
generation is deterministic); a different GPU or driver changes low bits of fp16/bf16 kernels,
which the default tolerance (mean 1.0, max 32 out of 255) allows; a different prompt, seed,
LoRA or an edited image is far outside it.

Command line: ``python -m helpers.bundle make RUN_DIR OUT`` and
``python -m helpers.bundle check BUNDLE``; ``--help`` on each. Taught in
``notebooks/04_comic_strip.ipynb``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from .cache import sha256_file
from .io import OutputExistsError, check_writable, write_json, write_text
from .panels import MANIFEST, load_manifest, panel_name
from .storyboard import dump_storyboard, load_storyboard, validate_storyboard

BUNDLE_JSON = "bundle.json"
BUNDLE_VERSION = 1
MEAN_TOLERANCE = 1.0  # mean absolute difference, 0-255 scale
MAX_TOLERANCE = 32.0  # largest single-channel difference, 0-255 scale
LIBRARIES = ("diffsynth", "torch", "transformers", "peft", "safetensors", "numpy", "pillow",
             "aesthetics-predictor")


class BundleError(ValueError):
    """A bundle (or the run folder it is made from) is incomplete or has been altered."""


def library_versions() -> dict[str, str]:
    """Versions of Python and the libraries that decide what a panel looks like."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "missing"
    try:
        import torch

        out["cuda"] = str(torch.version.cuda)
        if torch.cuda.is_available():
            out["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return out


def _storyboard_from_manifest(manifest: dict):
    """The storyboard exactly as the run generated it (the scenes' effective settings)."""
    scenes = []
    for s in manifest["scenes"]:
        item = {"caption": s["caption"], "positive": s["positive"], "negative": s["negative"], "seed": s["seed"]}
        item["size"] = [s["width"], s["height"]]
        item["steps"], item["cfg"] = s["steps"], s["cfg"]
        scenes.append(item)
    sb = manifest["storyboard"]
    return validate_storyboard({"title": sb["title"], "scenes": scenes}, name=sb["name"])


def make_bundle(run_dir: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Pack the panel run in ``run_dir`` into the bundle folder ``out`` (see the module docstring).

    The folder is built beside ``out`` and renamed into place, so a failure leaves no half
    bundle. Raises :class:`BundleError` when the run is incomplete (no manifest, a panel
    missing, the LoRA file gone) and :class:`~helpers.io.OutputExistsError` when ``out``
    exists and not ``overwrite``.
    """
    run_dir, out = Path(run_dir), Path(out)
    if not (run_dir / MANIFEST).is_file():
        raise BundleError(f"{run_dir} has no {MANIFEST}: bundle a run folder written by "
                          "helpers.panels.generate_panels (notebooks/04_comic_strip.ipynb)")
    manifest = load_manifest(run_dir)
    files = [s["file"] for s in manifest["scenes"]]
    missing = [f for f in files if not (run_dir / f).is_file()]
    if missing:
        raise BundleError(f"{run_dir} is missing {missing}: finish the run (generate_panels resumes) first")
    lora = manifest.get("lora")
    if lora and not Path(lora["path"]).is_file():
        raise BundleError(f"the run's LoRA {lora['path']} is gone; the bundle needs the exact file")
    check_writable(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent))
    try:
        (tmp / "panels").mkdir()
        for f in files:
            shutil.copy2(run_dir / f, tmp / "panels" / f)
        bundled = dict(manifest)
        if lora:
            (tmp / "lora").mkdir()
            shutil.copy2(lora["path"], tmp / "lora" / "lora.safetensors")
            write_json(tmp / "lora" / "metadata.json", lora["metadata"])
            bundled["lora"] = {**lora, "path": "lora/lora.safetensors", "original_path": lora["path"]}
        write_json(tmp / MANIFEST, bundled)
        story = _storyboard_from_manifest(manifest)
        write_text(tmp / "storyboard.yaml", dump_storyboard(story))
        pd.DataFrame([{"panel": s["number"], "file": s["file"], "seed": s["seed"], "width": s["width"],
                       "height": s["height"], "steps": s["steps"], "cfg": s["cfg"]} for s in manifest["scenes"]]
                     ).to_csv(tmp / "seeds.csv", index=False)
        contents = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        write_json(tmp / BUNDLE_JSON, {
            "bundle_version": BUNDLE_VERSION,
            "weights": manifest["weights"],
            "storyboard": manifest["storyboard"]["name"],
            "source_run": str(run_dir.resolve()),
            "settings": manifest["settings"],
            "pipeline": manifest["pipeline"],
            "models": manifest["models"],
            "lora": bundled["lora"],
            "versions": library_versions(),
            "tolerance": {"mean_abs": MEAN_TOLERANCE, "max_abs": MAX_TOLERANCE, "scale": "0-255 per channel"},
            "sha256": {name: sha256_file(tmp / name) for name in contents},
        })
        if out.exists():  # overwrite=True, checked above
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def verify_files(bundle: str | os.PathLike) -> dict[str, str]:
    """Files whose sha256 differs from ``bundle.json`` (name -> ``changed``/``missing``); empty: intact."""
    bundle = Path(bundle)
    if not (bundle / BUNDLE_JSON).is_file():
        raise BundleError(f"{bundle} has no {BUNDLE_JSON}; make one with `python -m helpers.bundle make`")
    record = json.loads((bundle / BUNDLE_JSON).read_text(encoding="utf-8"))
    problems = {}
    for name, digest in record["sha256"].items():
        path = bundle / name
        if not path.is_file():
            problems[name] = "missing"
        elif sha256_file(path) != digest:
            problems[name] = "changed"
    return problems


def pixel_difference(a: Image.Image | str | os.PathLike, b: Image.Image | str | os.PathLike) -> dict[str, float]:
    """Max and mean absolute difference (0-255) of two RGB images of the same size."""
    arrays = []
    for im in (a, b):
        if not isinstance(im, Image.Image):
            im = Image.open(im)
        arrays.append(np.asarray(im.convert("RGB"), dtype=np.int16))
    if arrays[0].shape != arrays[1].shape:
        return {"max_abs": float("inf"), "mean_abs": float("inf")}
    diff = np.abs(arrays[0] - arrays[1])
    return {"max_abs": float(diff.max()), "mean_abs": float(diff.mean())}


@dataclass
class CheckResult:
    """What :func:`check_bundle` found: a per-panel table, the file check and the verdict."""

    table: pd.DataFrame
    file_problems: dict[str, str]
    tolerance: dict[str, float]
    weights: str
    seconds: float

    @property
    def passed(self) -> bool:
        return bool(self.table["matches"].all()) and not self.file_problems

    def summary(self) -> str:
        t = self.table
        word = "REPRODUCED" if self.passed else "NOT REPRODUCED"
        line = (f"{word}: {int(t['matches'].sum())}/{len(t)} panels within tolerance (mean_abs <= "
                f"{self.tolerance['mean_abs']}, max_abs <= {self.tolerance['max_abs']}); worst mean_abs "
                f"{t['mean_abs'].max():.3f}, worst max_abs {t['max_abs'].max():.0f}")
        if self.file_problems:
            line += f"; files altered since bundling: {self.file_problems}"
        return line + f"  [weights: {self.weights}]"


def check_bundle(bundle: str | os.PathLike, pipe=None, *, models=None, mean_tolerance: float | None = None,
                 max_tolerance: float | None = None, device: str | None = None, dtype: str | None = None,
                 keep: str | os.PathLike | None = None, progress: bool = True) -> CheckResult:
    """Regenerate the bundle's panels and compare them with the submitted ones, panel by panel.

    ``pipe``: a DiffSynth Kolors ``SDXLImagePipeline`` to reuse (any LoRA on it is replaced by the
    bundle's; it is taken off again afterwards); None loads one from ``models`` (default: resolved
    in the bundle's weights mode). Tolerances default to the bundle's. ``keep``: a folder to keep
    the regenerated panels in (default: a temporary folder, deleted). The table has ``panel, file,
    seed, max_abs, mean_abs, matches``.
    """
    from .lora import apply_lora, loaded_lora, unload_lora
    from .panels import generate_panels, lora_record

    bundle = Path(bundle)
    problems = verify_files(bundle)
    record = json.loads((bundle / BUNDLE_JSON).read_text(encoding="utf-8"))
    manifest = load_manifest(bundle)
    tol = {"mean_abs": float(mean_tolerance if mean_tolerance is not None else record["tolerance"]["mean_abs"]),
           "max_abs": float(max_tolerance if max_tolerance is not None else record["tolerance"]["max_abs"])}
    story = replace(load_storyboard(bundle / "storyboard.yaml"), name=manifest["storyboard"]["name"])
    settings = manifest["settings"]
    if models is None:
        from .models import resolve_models

        mode = "offline" if manifest["weights"] != "real" else "real"
        models = resolve_models(tuple(manifest["models"]), mode=mode, verbose=False)
    if models.weights != manifest["weights"]:
        raise BundleError(f"the bundle was made with {manifest['weights']} weights but the models given are "
                          f"{models.weights}; the panels cannot match")
    if pipe is None:
        from .kolors import load_pipeline

        pipe = load_pipeline(models, device=device, dtype=dtype)
    before = loaded_lora(pipe)
    lora = manifest.get("lora")
    lora_file = bundle / "lora" / "lora.safetensors"
    start = time.perf_counter()
    work = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="bundle-check-"))
    try:
        if lora:
            apply_lora(pipe, lora_file, scale=lora["scale"])
        elif before is not None:
            unload_lora(pipe)
        generate_panels(pipe, story, work, models, width=settings["width"], height=settings["height"],
                        steps=settings["steps"], cfg=settings["cfg"],
                        lora=lora_record(lora_file, lora["scale"]) if lora else None, progress=progress)
        rows = []
        for scene in story.scenes:
            name = panel_name(scene)
            diff = pixel_difference(bundle / "panels" / name, work / name)
            rows.append({"panel": scene.number, "file": name, "seed": scene.seed, **diff,
                         "matches": diff["mean_abs"] <= tol["mean_abs"] and diff["max_abs"] <= tol["max_abs"]})
    finally:
        if lora:
            unload_lora(pipe)
        if before is not None:  # put the caller's LoRA back as it was
            apply_lora(pipe, before["path"], scale=before["scale"])
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    table = pd.DataFrame(rows, columns=["panel", "file", "seed", "max_abs", "mean_abs", "matches"])
    return CheckResult(table=table, file_problems=problems, tolerance=tol, weights=manifest["weights"],
                       seconds=time.perf_counter() - start)


# ------------------------------------------------------------------------------------ command line

def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m helpers.bundle",
                                     description="Pack a panel run into a reproducibility bundle, or check one.")
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("make", help="pack a run folder (panels + manifest.json) into a bundle folder")
    make.add_argument("run_dir", help="the run folder written by helpers.panels.generate_panels")
    make.add_argument("out", help="the bundle folder to create")
    make.add_argument("--overwrite", action="store_true", help="replace an existing bundle folder")
    check = sub.add_parser("check", help="regenerate a bundle's panels and compare them with the submitted ones")
    check.add_argument("bundle", help="the bundle folder made by `make`")
    check.add_argument("--mean-tolerance", type=float, default=None,
                       help=f"largest mean absolute pixel difference (0-255) that matches (default: the bundle's, {MEAN_TOLERANCE})")
    check.add_argument("--max-tolerance", type=float, default=None,
                       help=f"largest single pixel difference (0-255) that matches (default: the bundle's, {MAX_TOLERANCE})")
    check.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    check.add_argument("--dtype", default=None, help="fp16, bf16 or fp32 (default: fp16 on GPU, bf16 on CPU)")
    check.add_argument("--keep", default=None, help="keep the regenerated panels in this folder")
    check.add_argument("--report", default=None, help="also write the per-panel table to this CSV file")
    check.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    if args.command == "make":
        out = make_bundle(args.run_dir, args.out, overwrite=args.overwrite)
        record = json.loads((out / BUNDLE_JSON).read_text(encoding="utf-8"))
        print(f"bundle: {out} ({len(record['sha256'])} files, lora: {'yes' if record['lora'] else 'no'}, "
              f"weights: {record['weights']})")
        return 0
    result = check_bundle(args.bundle, mean_tolerance=args.mean_tolerance, max_tolerance=args.max_tolerance,
                          device=args.device, dtype=args.dtype, keep=args.keep, progress=not args.no_progress)
    print(result.table.to_string(index=False))
    print(result.summary())
    print(f"checked in {result.seconds:.1f} s")
    if args.report:
        from .io import atomic_path

        with atomic_path(args.report) as tmp:
            result.table.assign(weights=result.weights).to_csv(tmp, index=False)
    return 0 if result.passed else 1


if __name__ == "__main__":
    try:
        sys.exit(main(parse_args()))
    except (BundleError, OutputExistsError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
