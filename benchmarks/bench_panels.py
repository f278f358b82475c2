"""Seconds per comic panel with DiffSynth's Kolors SDXLImagePipeline: base, LoRA unfused, LoRA fused.

On a GPU (the figure that matters): 1024 x 1024 px, 50 steps, in fp16 and bf16. Without CUDA it
runs a small configuration (128 px, 2 steps, bf16) and says so: those figures show the relative
cost of an unfused LoRA, not what a learner waits for at full size.

"Unfused" is a peft LoRA injected into the UNet (``inject_adapter_in_model``, as the baseline
loads it): every attention projection runs its base layer plus the low-rank branch. "Fused"
merges the same LoRA into the weights (peft's ``merge``): the UNet costs what the base one does.
The LoRA here is a random one of the chosen rank on the baseline's target modules; its values do
not change the timing. Loading the pipeline holds the Kolors UNet (~12 GB): on a shared machine
run under ``flock /tmp/kolors-heavy.lock``.

    python benchmarks/bench_panels.py            # auto: GPU figures if CUDA, else the small CPU run
    python benchmarks/bench_panels.py --size 64 --steps 2 --repeats 1
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers.kolors import load_pipeline  # noqa: E402
from helpers.models import resolve_models  # noqa: E402

PROMPT = "古风，水墨画，一个黑色长发少女，坐在古代书院的教室里，认真听讲，上半身，绿色长裙"
NEGATIVE = "现代风格，数字画，丑陋，变形，嘈杂，模糊，低对比度，扭曲的手指，多余的手指"
TARGETS = ["to_q", "to_k", "to_v", "to_out"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    gpu = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if gpu else "cpu", help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--size", type=int, default=None, help="panel width and height in px (default: 1024 GPU, 128 CPU)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: 50 GPU, 2 CPU)")
    parser.add_argument("--dtypes", nargs="+", default=None, choices=["fp16", "bf16", "fp32"],
                        help="precisions to compare (default: fp16 bf16 on GPU, bf16 on CPU)")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank (the competition suggests 16 for a style)")
    parser.add_argument("--alpha", type=float, default=4.0, help="LoRA alpha (the baseline trains with 4.0)")
    parser.add_argument("--cfg", type=float, default=4.0, help="guidance scale (the baseline's 4)")
    parser.add_argument("--repeats", type=int, default=None, help="timed panels per setting (default: 3 GPU, 1 CPU)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed panels first (the first call pays one-off costs)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    on_gpu = args.device.startswith("cuda")
    args.size = args.size or (1024 if on_gpu else 128)
    args.steps = args.steps or (50 if on_gpu else 2)
    args.dtypes = args.dtypes or (["fp16", "bf16"] if on_gpu else ["bf16"])
    args.repeats = args.repeats or (3 if on_gpu else 1)
    if args.size % 8 or args.size < 64:
        raise ValueError(f"--size must be a multiple of 8 and at least 64, got {args.size}")
    if args.repeats < 1 or args.steps < 1 or args.rank < 1:
        raise ValueError("--repeats, --steps and --rank must be at least 1")
    return args


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_memory_gib(device: str) -> float | None:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    except ImportError:
        return None


def time_panels(pipe, args, label: str, bar) -> dict:
    """Seconds per panel (mean and best of ``args.repeats``) at the benchmark's settings."""
    def panel(seed: int) -> None:
        pipe(prompt=PROMPT, negative_prompt=NEGATIVE, cfg_scale=args.cfg, num_inference_steps=args.steps,
             height=args.size, width=args.size, seed=seed, progress_bar_cmd=lambda x: x)

    for i in range(args.warmup):
        bar.set_postfix_str(f"{label} warm-up")
        panel(1000 + i)
    times = []
    for i in range(args.repeats):
        bar.set_postfix_str(f"{label} {i + 1}/{args.repeats}")
        sync(args.device)
        start = time.perf_counter()
        panel(i)
        sync(args.device)
        times.append(time.perf_counter() - start)
        bar.update()
    return {"mean_s": sum(times) / len(times), "best_s": min(times), "per_step_s": min(times) / args.steps}


def add_lora(unet, rank: int, alpha: float) -> int:
    """Inject a random peft LoRA into DiffSynth's UNet (unfused); returns how many layers carry one."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=TARGETS)
    inject_adapter_in_model(config, unet)
    layers = [m for m in unet.modules() if isinstance(m, LoraLayer)]
    with torch.no_grad():
        for layer in layers:  # gaussian init leaves B = 0; give it values so the branch is not trivial
            for b in layer.lora_B.values():
                b.weight.normal_(0, 1e-3)
    dtype, device = next(unet.parameters()).dtype, next(unet.parameters()).device
    unet.to(device=device, dtype=dtype)
    return len(layers)


def fuse_lora(unet) -> None:
    """Merge every LoRA branch into its base weight (peft ``merge``): the fused form."""
    from peft.tuners.lora import LoraLayer

    for module in unet.modules():
        if isinstance(module, LoraLayer):
            module.merge()


def main(args: argparse.Namespace) -> int:
    on_gpu = args.device.startswith("cuda")
    print(f"bench_panels: {args.size}x{args.size} px, {args.steps} steps, cfg {args.cfg}, dtypes {args.dtypes}, "
          f"LoRA rank {args.rank} alpha {args.alpha} on {TARGETS}, {args.repeats} timed (+{args.warmup} warm-up) "
          f"panels per setting, device {args.device}")
    if not on_gpu:
        print("NOTE: no CUDA here, so this is the SMALL CPU configuration; it is not the 1024 px / 50 step "
              "GPU figure (see the README's published ones).")
    models = resolve_models(("text_encoder", "unet", "vae"))
    rows = []
    with tqdm(total=3 * args.repeats * len(args.dtypes), desc="panels", unit="panel") as bar:
        for dtype in args.dtypes:
            if on_gpu:
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            pipe = load_pipeline(models, device=args.device, dtype=dtype)
            load_s = time.perf_counter() - start
            row = {"dtype": dtype, "load_s": load_s, "base": time_panels(pipe, args, f"{dtype} base", bar)}
            row["lora_layers"] = add_lora(pipe.unet, args.rank, args.alpha)
            row["lora_unfused"] = time_panels(pipe, args, f"{dtype} LoRA unfused", bar)
            fuse_lora(pipe.unet)
            row["lora_fused"] = time_panels(pipe, args, f"{dtype} LoRA fused", bar)
            row["peak_memory_gib"] = peak_memory_gib(args.device)
            rows.append(row)
            del pipe
            gc.collect()
            if on_gpu:
                torch.cuda.empty_cache()

    print(f"\nseconds per {args.size}x{args.size} panel, {args.steps} steps "
          f"({'GPU: ' + torch.cuda.get_device_name(0) if on_gpu else 'CPU, small configuration'}; "
          f"weights: {models.weights})")
    header = f"{'dtype':6s} {'base':>9s} {'LoRA unfused':>13s} {'LoRA fused':>11s} {'unfused/base':>13s} {'load s':>7s} {'peak GiB':>9s}"
    print(header)
    print("-" * len(header))
    for r in rows:
        ratio = r["lora_unfused"]["best_s"] / r["base"]["best_s"]
        peak = f"{r['peak_memory_gib']:.1f}" if r["peak_memory_gib"] is not None else "n/a"
        print(f"{r['dtype']:6s} {r['base']['best_s']:9.2f} {r['lora_unfused']['best_s']:13.2f} "
              f"{r['lora_fused']['best_s']:11.2f} {ratio:13.2f} {r['load_s']:7.1f} {peak:>9s}")
    print("(best of the timed panels; peak memory: GPU allocated, or the process's peak RSS on CPU)")
    if args.json:
        from helpers.io import write_json

        write_json(args.json, {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                               "weights": models.weights, "rows": rows}, overwrite=True)
        print("wrote", args.json)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main(parse_args()))
