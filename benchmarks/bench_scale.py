"""Benchmark: images/s of the Ray recipe on Data-Juicer's single-process executor vs Ray.

One run, one generated folder, the same recipe (data/recipes/ray_aesthetic_prefilter.yaml):
first Data-Juicer's default executor with one process, then its Ray executor on a local
Ray head (127.0.0.1) with ``--workers`` CPUs. The figures are printed side by side and
written to ``outputs/bench/scale-<time>.json``. Timings include loading the predictor in
each worker (that is part of what a run costs); the head's start-up is shown separately.

The shape and aspect thresholds are opened up so that every readable image reaches the
aesthetic predictor: the figure is the cost of the whole recipe per image.

    PYTHONPATH=. python benchmarks/bench_scale.py --images 2000 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tqdm.auto import tqdm  # noqa: E402

from helpers.io import write_json  # noqa: E402
from helpers.models import resolve_models  # noqa: E402
from helpers.paths import outputs_dir  # noqa: E402
from helpers.scale import (AESTHETIC_OP, RECIPE, aesthetic_score_scale, image_dataset, load_recipe,  # noqa: E402
                           local_ray_head, make_image_folder, run_recipe)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="how many images to generate")
    parser.add_argument("--corrupt", type=int, default=20, help="how many corrupt files to add")
    parser.add_argument("--min-side", type=int, default=32, help="smallest generated side, px")
    parser.add_argument("--max-side", type=int, default=96, help="largest generated side, px")
    parser.add_argument("--folder", type=Path, default=None,
                        help="use this image folder instead of generating one")
    parser.add_argument("--workers", type=int, default=2, help="CPUs of the local Ray head (parallel Ray workers)")
    parser.add_argument("--object-store-mb", type=int, default=512, help="Ray object store size, MB")
    parser.add_argument("--min-score", type=float, default=None,
                        help="aesthetic min_score on Data-Juicer's scale (default: 3e-5 on the offline "
                             "random predictor, whose scores are tiny; the recipe's 0.6 on real weights)")
    parser.add_argument("--recipe", type=Path, default=RECIPE, help="Data-Juicer recipe (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=None,
                        help="results JSON (default: outputs/bench/scale-<time>.json; never overwritten)")
    args = parser.parse_args(argv)
    if args.images < 1 or args.workers < 1:
        raise ValueError("--images and --workers must be at least 1")
    return args


def main(args: argparse.Namespace) -> dict:
    models = resolve_models(("aesthetic",))
    min_score = args.min_score if args.min_score is not None else (3e-5 if models.offline else None)
    op_args = {"image_shape_filter": {"min_width": 1, "min_height": 1},
               "image_aspect_ratio_filter": {"min_ratio": 0.01, "max_ratio": 100.0}}
    if min_score is not None:
        op_args[AESTHETIC_OP] = {"min_score": min_score}
    out = args.out or outputs_dir() / "bench" / time.strftime("scale-%Y%m%d-%H%M%S.json")
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        tmp = Path(tmp)
        folder = args.folder
        if folder is None:
            folder = tmp / "images"
            make_image_folder(folder, args.images, args.corrupt, args.min_side, args.max_side)
        n = image_dataset(folder, tmp / "dataset.jsonl")
        cfg = load_recipe(args.recipe, scorer_path=models.aesthetic, op_args=op_args,
                          dataset_path=str(tmp / "dataset.jsonl"))
        print(f"bench_scale: {n} files from {folder}, recipe {args.recipe.name}, "
              f"scorer scale /{aesthetic_score_scale(models.aesthetic):.0f}, weights: {models.weights}", flush=True)
        runs = {}
        bar = tqdm(total=3, desc="bench_scale")
        bar.set_postfix_str("default executor, 1 process")
        runs["default (1 process)"] = run_recipe(cfg, tmp / "default", executor="default", np=1)
        bar.update()
        bar.set_postfix_str("starting Ray head")
        start = time.perf_counter()
        with local_ray_head(num_cpus=args.workers, object_store_mb=args.object_store_mb) as address:
            head_s = time.perf_counter() - start
            bar.update()
            bar.set_postfix_str(f"Ray executor, {args.workers} workers")
            runs[f"ray ({args.workers} workers)"] = run_recipe(cfg, tmp / "ray", executor="ray", ray_address=address)
        bar.update()
        bar.close()

    import torch

    names = list(runs)
    same = runs[names[0]].kept == runs[names[1]].kept
    rows = [("images in", lambda r: f"{r.n_input}"), ("kept", lambda r: f"{len(r.kept)}"),
            ("corrupt (reported)", lambda r: f"{len(r.corrupt)}"), ("seconds", lambda r: f"{r.seconds:.1f}"),
            ("images/s", lambda r: f"{r.images_per_s:.1f}")]
    print(f"\n{'':20s}" + "".join(f"{name:>22s}" for name in names))
    for label, fmt in rows:
        print(f"{label:20s}" + "".join(f"{fmt(runs[name]):>22s}" for name in names))
    speedup = runs[names[0]].seconds / runs[names[1]].seconds
    print(f"\nRay vs one process: x{speedup:.2f}; Ray head start-up {head_s:.1f} s (not counted); "
          f"same kept set: {same}")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    print(f"machine: {os.cpu_count()} CPU cores, GPU: {gpu or 'none (CPU only)'}; weights: {models.weights}")
    result = {"benchmark": "bench_scale", "weights": models.weights, "cpu_cores": os.cpu_count(), "gpu": gpu,
              "python": platform.python_version(), "images": n, "min_score": min_score,
              "ray_head_start_s": round(head_s, 1), "same_kept_set": same, "speedup": round(speedup, 2),
              "runs": {name: run.summary() for name, run in runs.items()}, **_versions()}
    write_json(out, result)
    print(f"results: {out}")
    return result


def _versions() -> dict:
    from importlib.metadata import version

    return {"versions": {p: version(p) for p in ("py-data-juicer", "ray", "torch", "transformers")}}


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    main(parse_args())
