"""Benchmark: the competition's original one-image scoring loop vs the kit's scorer.

Both score the same images with the same predictor architecture (CLIP ViT-L/14 + the
linear head; on the offline set ``offline_clip="full"`` builds that full-size tower with
random weights, once, about 1.2 GB). In one run it prints, side by side, images per second
of:

- ``seed loop``: the code the competition published (seed 001), verbatim: ``os.listdir``,
  ``Image.open``, one ``processor`` + ``predictor`` call per image, fp32;
- ``kit``: :func:`helpers.scoring.score_paths` with its default precision (fp16 on a GPU,
  fp32 on a CPU: the same numbers as the seed loop);
- ``kit bf16`` (CPU only, unless ``--no-bf16``): the kit in bfloat16, faster on CPUs with
  bf16 instructions, at the price of small score differences (printed).

and the speed-up over the seed loop with the largest score difference from it. Model
loading is not timed; each method scores one image untimed first (warm-up). With random
weights the predictor's head gives scores of about 1e-4, so (unless ``--keep-head``) the
head is re-drawn identically in every copy to spread scores over a realistic ~1-10 range,
which makes the score differences meaningful. Run::

    python benchmarks/bench_scoring.py --num-images 16
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; ``argv=None`` reads ``sys.argv``."""
    parser = argparse.ArgumentParser(prog="python benchmarks/bench_scoring.py",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--num-images", type=int, default=16, help="images to score per method (default 16)")
    parser.add_argument("--image-size", type=int, default=1024,
                        help="side of the generated JPEG images in pixels (default 1024, like competition panels)")
    parser.add_argument("--images", type=Path, default=None,
                        help="score this folder's images instead of generated ones (every file must be an image: "
                             "the seed loop stops at the first bad file)")
    parser.add_argument("--batch-size", type=int, default=8, help="the kit's batch size (default 8)")
    parser.add_argument("--num-workers", type=int, default=2, help="the kit's decode threads (default 2)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="timed rounds, methods alternating within each; the best round counts (default 1)")
    parser.add_argument("--offline-clip", choices=["full", "small"], default="full",
                        help="offline predictor size when real weights are absent (default full: ViT-L/14)")
    parser.add_argument("--weights", choices=["auto", "real", "offline"], default=None,
                        help="which predictor weights (default: $KOLORS_KIT_WEIGHTS or auto)")
    parser.add_argument("--no-bf16", action="store_true", help="skip the kit-in-bfloat16 row on a CPU")
    parser.add_argument("--keep-head", action="store_true",
                        help="with offline weights, keep the random head as built (scores about 1e-4)")
    parser.add_argument("--output", type=Path, default=None, help="also write the figures to this JSON file")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    args = parser.parse_args(argv)
    if args.num_images < 1 or args.batch_size < 1 or args.rounds < 1:
        parser.error("--num-images, --batch-size and --rounds must be at least 1")
    return args


def make_images(folder: Path, count: int, size: int) -> list[Path]:
    """``count`` varied RGB JPEGs (gradients, waves, noise) of ``size`` x ``size`` pixels."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    paths = []
    for i in range(count):
        rng = np.random.default_rng(i)
        f = rng.uniform(1, 12, 3)
        rgb = np.stack([np.sin(f[0] * x * 6 + i), np.cos(f[1] * y * 6 - i), np.sin(f[2] * (x * y) * 9)], -1)
        rgb = (rgb + 1) * 110 + rng.normal(0, 12, (size, size, 3))
        path = folder / f"panel_{i:03d}.jpg"
        Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(path, quality=92)
        paths.append(path)
    return paths


def spread_head(predictor, seed: int = 0) -> None:
    """Re-draw the head of a random predictor so scores spread over ~1-10 (same in every copy)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in predictor.layers:
            if isinstance(layer, torch.nn.Linear):
                weight = torch.randn(layer.weight.shape, generator=generator) * (1.5 / math.sqrt(layer.in_features))
                layer.weight.copy_(weight)
                layer.bias.zero_()
        predictor.layers[-1].bias.fill_(5.0)


def seed_loop(predictor, processor, device: str, folder: Path) -> list[float]:
    """The competition's published loop (seed 001), kept as it is, returning every score."""
    from PIL import Image

    from helpers.scoring import seed_scorer

    get_aesthetics_score = seed_scorer(predictor, processor, device)
    scores = []
    for file_name in sorted(os.listdir(folder)):  # sorted so rows line up with the kit's
        if os.path.isfile(os.path.join(folder, file_name)):
            image = Image.open(os.path.join(folder, file_name))
            scores.append(get_aesthetics_score(image))
    return scores


def main(args: argparse.Namespace) -> int:
    """Run the benchmark, print the table; returns the exit status."""
    import numpy as np
    import torch
    from aesthetics_predictor import AestheticsPredictorV2Linear
    from tqdm.auto import tqdm
    from transformers import CLIPProcessor

    from helpers.io import check_writable, write_json
    from helpers.models import resolve_models
    from helpers.scoring import CompetitionScorer, _auto_device, score_paths

    if args.output:
        check_writable(args.output, args.overwrite)
    device = _auto_device(args.device)
    models = resolve_models(("aesthetic",), args.weights, offline_clip=args.offline_clip)
    path = models.aesthetic
    weights = models.sources["aesthetic"]
    spread = weights != "real" and not args.keep_head

    def load_predictor():
        predictor = AestheticsPredictorV2Linear.from_pretrained(path)
        if spread:
            spread_head(predictor)
        return predictor

    with tempfile.TemporaryDirectory(prefix="bench-scoring-") as tmp:
        warm_folder = Path(tmp) / "warmup"
        if args.images:
            folder = args.images
            warm_folder.mkdir()
            first = sorted(f for f in os.listdir(folder) if os.path.isfile(folder / f))[0]
            shutil.copy(folder / first, warm_folder / first)
        else:
            folder = Path(tmp) / "images"
            make_images(folder, args.num_images, args.image_size)
            make_images(warm_folder, 1, args.image_size)
        n_images = sum(1 for f in os.listdir(folder) if os.path.isfile(folder / f))

        processor = CLIPProcessor.from_pretrained(path)
        seed_predictor = load_predictor().to(device)  # as the seed does: fp32, .to(device)
        kit = CompetitionScorer(load_predictor(), processor, weights=weights, device=device)
        methods = {
            "seed loop": lambda f: seed_loop(seed_predictor, processor, device, f),
            "kit": lambda f: score_paths(f, kit, batch_size=args.batch_size, num_workers=args.num_workers,
                                         progress=False)["score"].tolist(),
        }
        dtypes = {"seed loop": "float32", "kit": str(kit.dtype).replace("torch.", "")}
        if device == "cpu" and not args.no_bf16:
            kit_bf16 = CompetitionScorer(load_predictor(), processor, weights=weights, device=device, dtype="bf16")
            methods["kit bf16"] = lambda f: score_paths(f, kit_bf16, batch_size=args.batch_size,
                                                        num_workers=args.num_workers, progress=False)["score"].tolist()
            dtypes["kit bf16"] = "bfloat16"

        gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") else None
        print(f"device : {gpu or f'CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads'}\n"
              f"model  : {path}\nweights: {weights}" + (" (head re-drawn to spread scores; see --keep-head)"
                                                       if spread else "") +
              f"\nimages : {n_images} x {'their own size' if args.images else f'{args.image_size} px JPEG'}; "
              f"kit batch {args.batch_size}, {args.num_workers} decode threads; best of {args.rounds} round(s)",
              flush=True)

        for fn in methods.values():  # warm-up, untimed
            fn(warm_folder)
        seconds = {name: [] for name in methods}
        scores = {}
        with tqdm(total=args.rounds * len(methods), desc="benchmark", unit="run") as bar:
            for _ in range(args.rounds):
                for name, fn in methods.items():
                    bar.set_postfix_str(name)
                    start = time.perf_counter()
                    scores[name] = fn(folder)
                    seconds[name].append(time.perf_counter() - start)
                    bar.update()

    reference = np.asarray(scores["seed loop"], dtype=float)
    base_rate = n_images / min(seconds["seed loop"])
    rows = []
    for name in methods:
        best = min(seconds[name])
        rate = n_images / best
        diff = float(np.nanmax(np.abs(np.asarray(scores[name], dtype=float) - reference)))
        rows.append({"method": name, "dtype": dtypes[name], "seconds": round(best, 2),
                     "median_seconds": round(statistics.median(seconds[name]), 2), "images_per_s": round(rate, 3),
                     "speedup": round(rate / base_rate, 2), "max_abs_diff_vs_seed": diff})
    print(f"\n{'method':10s} {'dtype':9s} {'seconds':>8s} {'images/s':>9s} {'speed-up':>9s} {'max |diff| vs seed':>19s}")
    for r in rows:
        print(f"{r['method']:10s} {r['dtype']:9s} {r['seconds']:8.2f} {r['images_per_s']:9.3f} "
              f"{r['speedup']:8.2f}x {r['max_abs_diff_vs_seed']:19.2e}")
    print(f"(seed scores: mean {reference.mean():.3f}, spread {reference.std():.3f})")
    goal = 10 if gpu else 2
    kit_ratio = rows[1]["speedup"]
    print(f"\nkit / seed loop: {kit_ratio:.2f}x at the seed's numbers (goal >= {goal}x on {'a GPU' if gpu else 'a CPU'})")
    if len(rows) > 2:
        print(f"kit bf16 / seed loop: {rows[2]['speedup']:.2f}x, scores within {rows[2]['max_abs_diff_vs_seed']:.3f}")
    if not gpu:
        print("No GPU here: the >= 10x GPU goal was not measured on this run.")
    if args.output:
        write_json(args.output, {"device": gpu or f"CPU ({os.cpu_count()} cores)", "weights": weights,
                                 "head_spread": spread, "images": n_images, "image_size": args.image_size,
                                 "batch_size": args.batch_size, "num_workers": args.num_workers,
                                 "rounds": args.rounds, "rows": rows}, overwrite=args.overwrite)
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main(parse_args()))
