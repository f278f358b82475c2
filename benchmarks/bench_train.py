"""Benchmark: LoRA training steps/s and peak memory, the baseline's way against the kit's, in one run.

- ``baseline``: DiffSynth's Kolors example as the baseline notebook runs it: text encoder,
  UNet and VAE in memory, captions and images encoded again on every step, gradient
  checkpointing on, rank 16, fp16 on a GPU (bf16 on a CPU).
- ``kit``: cached conditioning (encoded once, in its own process first: ``cache`` row),
  then the UNet alone in memory, gradient checkpointing on, same LoRA and precision.
- ``kit-no-gc`` (optional): the same without gradient checkpointing.

Every configuration runs in its own subprocess, so peak memory is its own. The full-size
Kolors architecture is used (random weights are fine for speed); at 1024x1024 on a GPU,
at 128x128 on a CPU. A throw-away synthetic data set is written to a temporary folder.

    python benchmarks/bench_train.py                     # default sizes for this machine
    python benchmarks/bench_train.py --steps 5 --configs baseline kit kit-no-gc
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CONFIGS = {
    "baseline": ["--no_cache"],
    "kit": [],
    "kit-no-gc": ["--no_gradient_checkpointing"],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python benchmarks/bench_train.py", description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=["baseline", "kit"], choices=list(CONFIGS),
                        help="configurations to compare (each in its own process)")
    parser.add_argument("--resolution", type=int, default=None,
                        help="training size in pixels (default: 1024 on a GPU, 128 on a CPU)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per configuration (default: 20 GPU, 3 CPU)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (kernel set-up, allocator)")
    parser.add_argument("--lora_rank", type=int, default=16, help="LoRA rank (the baseline's 16)")
    parser.add_argument("--images", type=int, default=8, help="images in the synthetic data set")
    parser.add_argument("--output", type=Path, default=None,
                        help="JSON with the figures (default: <outputs>/benchmarks/bench_train.json)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: run one configuration
    parser.add_argument("--worker_args", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def worker(config: str, train_argv: list[str], warmup: int) -> dict:
    """Run one configuration in this process; returns its figures."""
    import lightning as pl
    import psutil
    import torch

    from helpers import train as kt

    args = kt.parse_args(train_argv)
    models, vae_key = kt.resolve_run_models(args)
    result = {"config": config, "device": args.device, "precision": args.precision, "weights": models.weights,
              "resolution": args.height, "gradient_checkpointing": args.use_gradient_checkpointing,
              "cached": args.cache}
    start = time.perf_counter()
    if config == "cache":
        _, report = kt.build_cache(args, models, vae_key)
        result.update(seconds=round(time.perf_counter() - start, 1), note=report.summary())
        result.update(kt.peak_memory_gib(args.device))
        return result
    cache = report = None
    if args.cache:
        cache, report = kt.build_cache(args, models, vae_key)
        if report.loaded_encoders:
            result["note"] = "cache was not complete: encoders were loaded in this process"
    pl.seed_everything(0, verbose=False)
    module = kt.build_module(args, models, vae_key, cache, run_info={})
    result["load_seconds"] = round(time.perf_counter() - start, 1)
    process = psutil.Process()

    class Timer(pl.Callback):
        def __init__(self):
            self.times, self.rss = [], 0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self.t0)
            self.rss = max(self.rss, process.memory_info().rss)

    timer = Timer()
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    trainer = kt.make_trainer(args, [timer], progress=False)
    trainer.fit(module, train_dataloaders=kt.make_dataloader(args, report))
    timed = timer.times[warmup:]
    result.update(steps=len(timed), seconds_per_step=round(sum(timed) / len(timed), 3),
                  steps_per_second=round(len(timed) / sum(timed), 3),
                  training_rss_gib=round(timer.rss / 1024 ** 3, 2), **kt.peak_memory_gib(args.device))
    return result


def run_config(config: str, train_argv: list[str], warmup: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", config, "--worker_args", json.dumps(train_argv), "--warmup", str(warmup)]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("BENCH_RESULT ")]
    if proc.returncode or not lines:
        return {"config": config, "error": (proc.stderr or proc.stdout)[-2000:]}
    return json.loads(lines[-1].removeprefix("BENCH_RESULT "))


def table(results: list[dict]) -> str:
    cols = [("config", "config"), ("device", "device"), ("precision", "precision"), ("resolution", "px"),
            ("cached", "cached"), ("gradient_checkpointing", "grad ckpt"), ("steps_per_second", "steps/s"),
            ("seconds_per_step", "s/step"), ("peak_gpu_gib", "peak GPU GiB"), ("training_rss_gib", "RSS training GiB"),
            ("peak_rss_gib", "peak RSS GiB"), ("load_seconds", "load s"), ("seconds", "s")]
    cols = [(k, h) for k, h in cols if any(k in r for r in results)]
    rows = [[h for _, h in cols]] + [[str(r.get(k, "-")) for k, _ in cols] for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows)


def main(args: argparse.Namespace) -> int:
    if args.worker:
        result = worker(args.worker, json.loads(args.worker_args), args.warmup)
        print("BENCH_RESULT " + json.dumps(result), flush=True)
        return 0
    import torch
    from tqdm.auto import tqdm

    from helpers.cache import synthetic_dataset
    from helpers.io import write_json
    from helpers.paths import outputs_dir

    gpu = torch.cuda.is_available()
    resolution = args.resolution or (1024 if gpu else 128)
    steps = args.steps or (20 if gpu else 3)
    device = torch.cuda.get_device_name(0) if gpu else f"CPU ({os.cpu_count()} cores)"
    print(f"bench_train: {', '.join(args.configs)} at {resolution}x{resolution}, {args.warmup} warm-up + {steps} "
          f"timed steps each, rank {args.lora_rank}, on {device}", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        dataset = synthetic_dataset(Path(tmp) / "data", n=args.images, size=resolution)
        common = ["--dataset_path", str(dataset), "--output_path", str(Path(tmp) / "out"), "--resolution",
                  str(resolution), "--max_steps", str(args.warmup + steps), "--lora_rank", str(args.lora_rank),
                  "--lora_alpha", "4", "--sample_prompts", "--cache_dir", str(Path(tmp) / "cache")]
        plan = [("cache", common)] if any(c != "baseline" for c in args.configs) else []
        plan += [(c, common + CONFIGS[c]) for c in args.configs]
        for config, argv in tqdm(plan, desc="configurations", unit="config"):
            results.append(run_config(config, argv, args.warmup))
            tqdm.write(f"  {config}: " + json.dumps({k: v for k, v in results[-1].items() if k != "config"},
                                                    ensure_ascii=False)[:300])
    print()
    print(table([r for r in results if "error" not in r]))
    for r in results:
        if "error" in r:
            print(f"\n{r['config']} FAILED:\n{r['error']}")
    by = {r["config"]: r for r in results if "steps_per_second" in r}
    if "baseline" in by and "kit" in by:
        print(f"\nkit vs baseline: {by['kit']['steps_per_second'] / by['baseline']['steps_per_second']:.2f}x steps/s; "
              f"peak RSS {by['kit']['peak_rss_gib']} vs {by['baseline']['peak_rss_gib']} GiB"
              + (f"; peak GPU {by['kit'].get('peak_gpu_gib')} vs {by['baseline'].get('peak_gpu_gib')} GiB" if gpu else ""))
    weights = {r.get("weights") for r in results} - {None}
    print(f"device: {device}; weights: {', '.join(sorted(weights))} (speed and memory do not depend on the values)")
    output = args.output or outputs_dir() / "benchmarks" / "bench_train.json"
    write_json(output, {"device": device, "resolution": resolution, "steps": steps, "results": results}, overwrite=True)
    print(f"wrote {output}")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main(parse_args()))
