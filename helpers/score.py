"""Score a folder of images with the competition's aesthetic predictor, from the command line.

    python -m helpers.score outputs/panels --csv scores.csv

Prints each file that could not be scored (with its reason), the mean/min/max and the
verdict (the competition needs a mean of at least 6.0). Exit status: 0 when at least one
image was scored, 1 when nothing could be scored (no images, or every file failed) or the
CSV already exists, 2 for bad arguments. Taught in ``notebooks/01_scoring.ipynb``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

PASS_THRESHOLD = 6.0  # the same number as helpers.scoring.PASS_THRESHOLD (not imported: --help stays instant)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; ``argv=None`` reads ``sys.argv``."""
    parser = argparse.ArgumentParser(
        prog="python -m helpers.score",
        description="Score images with the competition's aesthetic predictor (LAION V2, CLIP ViT-L/14 + linear) "
                    "and say whether the mean reaches 6.0.",
        epilog="Weights: real ones under models/ when present, else the offline random set (scores then mean "
               "nothing and are labelled 'offline-random'). Set KOLORS_KIT_WEIGHTS or use --weights.")
    parser.add_argument("inputs", nargs="+", type=Path, metavar="FOLDER",
                        help="folder(s) of images, or image files, to score")
    parser.add_argument("--csv", type=Path, default=None,
                        help="write one row per file (path, score, error, width, height, weights) to this CSV")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the --csv file if it already exists (default: refuse)")
    parser.add_argument("--recursive", "-r", action="store_true", help="also score images in subfolders")
    parser.add_argument("--batch-size", type=int, default=16,
                        help="images scored together on the device (default 16; lower it if memory runs out)")
    parser.add_argument("--num-workers", type=int, default=2,
                        help="threads decoding images while the device scores (default 2; 0: no threads)")
    parser.add_argument("--device", default="auto",
                        help="auto (GPU if there is one), cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--dtype", choices=["auto", "fp32", "fp16", "bf16"], default="auto",
                        help="auto: fp16 on a GPU, fp32 on a CPU (same numbers as the original); bf16 is "
                             "faster on recent CPUs but differs in the second decimal")
    parser.add_argument("--weights", choices=["auto", "real", "offline"], default=None,
                        help="which predictor weights (default: $KOLORS_KIT_WEIGHTS or auto)")
    parser.add_argument("--threshold", type=float, default=PASS_THRESHOLD,
                        help=f"mean score needed to qualify (default {PASS_THRESHOLD}, the competition's)")
    parser.add_argument("--json", action="store_true", help="also print the summary as one JSON line at the end")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.num_workers < 0:
        parser.error("--num-workers must be 0 or more")
    return args


def main(args: argparse.Namespace) -> int:
    """Score, print the run summary and failures, write the CSV; returns the exit status."""
    from .io import OutputExistsError, check_writable
    from .models import RealWeightsUnavailable, resolve_models
    from .scoring import (NoImagesError, NothingScoredError, list_images, load_competition_scorer, score_paths,
                          summarize, verdict, write_scores_csv)

    def fail(message: str) -> int:
        print(f"error: {message}", file=sys.stderr)
        return 1

    if args.csv is not None:
        try:
            check_writable(args.csv, args.overwrite)  # before the slow part, not after it
        except OutputExistsError as exc:
            return fail(str(exc))
    try:
        paths = list_images(args.inputs, recursive=args.recursive)
    except NoImagesError as exc:
        return fail(str(exc))
    try:
        models = resolve_models(("aesthetic",), args.weights)
    except RealWeightsUnavailable as exc:
        return fail(str(exc))
    start = time.perf_counter()
    scorer = load_competition_scorer(models, device=args.device, dtype=args.dtype)
    loaded = time.perf_counter() - start
    print(f"scorer : {scorer.name}\nweights: {scorer.weights}  ({models.aesthetic})\n"
          f"device : {scorer.device}, {str(scorer.dtype).replace('torch.', '')}, batch {args.batch_size}, "
          f"{args.num_workers} decode worker(s); loaded in {loaded:.1f} s\nimages : {len(paths)}", flush=True)

    start = time.perf_counter()
    df = score_paths(paths, scorer, batch_size=args.batch_size, num_workers=args.num_workers,
                     progress=not args.no_progress)
    seconds = time.perf_counter() - start
    failed = df[df["error"] != ""]
    for path, error in zip(failed["path"], failed["error"]):
        print(f"  skipped {path}: {error}")
    if args.csv is not None:
        try:
            print(f"wrote {write_scores_csv(df, args.csv, overwrite=args.overwrite)}")
        except OutputExistsError as exc:  # appeared while we were scoring
            return fail(str(exc))
    try:
        summary = summarize(df, threshold=args.threshold)
    except NothingScoredError as exc:
        return fail(str(exc))
    print(f"scored {summary['n_scored']} of {len(df)} in {seconds:.1f} s "
          f"({summary['n_scored'] / max(seconds, 1e-9):.2f} images/s); "
          f"min {summary['min']:.3f}, max {summary['max']:.3f}")
    print(verdict(summary))
    if args.json:
        print(json.dumps({**summary, "seconds": round(seconds, 3)}, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main(parse_args()))
