"""Run the whole course headless: every notebook in order, executed with papermill.

``make course`` calls ``python -m helpers.course``. Executed notebooks go to
``outputs/notebooks/``, everything they produce under ``outputs/``; at the end it lists
what was written and how long each notebook took. The tests use the same runner with
the ``test`` profile, so what CI runs is what a learner runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import yaml

from .paths import outputs_dir, repo_root

NOTEBOOKS_DIR = repo_root() / "notebooks"
PROFILES_FILE = NOTEBOOKS_DIR / "profiles.yaml"


def notebooks() -> list[Path]:
    """The course's notebooks, in reading order (``NN_name.ipynb``)."""
    return sorted(p for p in NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))


def profile_parameters(profile: str) -> dict[str, dict]:
    """Per-notebook parameters of ``profile`` from ``notebooks/profiles.yaml`` (``full``: none)."""
    if profile == "full":
        return {}
    profiles = yaml.safe_load(PROFILES_FILE.read_text(encoding="utf-8"))
    if profile not in profiles:
        raise ValueError(f"unknown profile {profile!r}; {PROFILES_FILE.name} has {sorted(profiles)} and 'full'")
    return profiles[profile] or {}


def auto_profile() -> str:
    """``full`` with a GPU and real Kolors weights on disk, else ``quick``."""
    import torch

    from .models import KOLORS, SPECS, is_present, weights_mode
    from .paths import models_dir

    real = weights_mode() != "offline" and all(is_present(SPECS[k], models_dir() / SPECS[k].relpath) for k in KOLORS)
    return "full" if torch.cuda.is_available() and real else "quick"


def run_notebook(notebook: Path, parameters: dict, out_root: Path, workdir: Path | None = None,
                 kernel_name: str = "python3") -> Path:
    """Execute one notebook with papermill; returns the executed copy's path.

    ``workdir`` is the working folder of the kernel (default: ``notebooks/``, as in
    JupyterLab). Raises papermill's ``PapermillExecutionError`` naming the failing cell.
    """
    import papermill as pm

    executed = out_root / "notebooks" / notebook.name
    executed.parent.mkdir(parents=True, exist_ok=True)
    pm.execute_notebook(
        str(notebook), str(executed),
        parameters={**parameters, "outputs_dir": str(out_root)},
        cwd=str(workdir or notebook.parent), kernel_name=kernel_name,
        progress_bar=False, log_output=True, stdout_file=sys.stdout, stderr_file=sys.stderr,
    )
    return executed


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m helpers.course", description=__doc__.split("\n")[0])
    parser.add_argument("--profile", choices=["auto", "quick", "test", "full"], default="auto",
                        help="parameter set (notebooks/profiles.yaml); auto: full on a GPU with real weights, else quick")
    parser.add_argument("--only", nargs="+", default=None, metavar="NN",
                        help="run only these notebooks, by number or name (e.g. 00 04_comic_strip)")
    parser.add_argument("--outputs", type=Path, default=None, help="where to write (default: outputs/)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    profile = auto_profile() if args.profile == "auto" else args.profile
    params = profile_parameters(profile)
    out_root = (args.outputs or outputs_dir()).resolve()
    chosen = [nb for nb in notebooks()
              if not args.only or any(nb.stem == o or nb.stem.startswith(o + "_") for o in args.only)]
    print(f"course: {len(chosen)} notebooks, profile '{profile}', writing to {out_root}", flush=True)
    timings = []
    for nb in chosen:
        print(f"\n=== {nb.name} ===", flush=True)
        start = time.perf_counter()
        run_notebook(nb, params.get(nb.stem, {}), out_root)
        timings.append((nb.name, time.perf_counter() - start))
    print("\n=== course finished ===")
    for name, seconds in timings:
        print(f"  {name:28s} {seconds:7.1f} s")
    print(f"\nOutputs under {out_root}:")
    for path in sorted(p for p in out_root.rglob("*") if p.is_file() and ".ipynb_checkpoints" not in p.parts):
        print(f"  {path.relative_to(out_root)}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
