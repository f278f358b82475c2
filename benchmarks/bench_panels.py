"""Benchmark: seconds per comic panel, without a LoRA, with it unfused and fused, in one run.

For each precision the Kolors pipeline is loaded once (DiffSynth's ``ModelManager`` ->
``SDXLImagePipeline``), then the same prompt and seed are drawn ``--panels`` times in each
configuration, after one warm-up panel:

- ``base``: no LoRA
- ``lora``: the LoRA as a separate peft layer (``helpers.lora.apply_lora``): its scale can change
- ``lora-fused``: the same LoRA merged into the weights (``helpers.lora.fuse_lora``)

On a GPU it runs the competition's setting, 1024x1024 at 50 steps, in fp16 and bf16; on a
CPU a small setting (128x128, 4 steps, bf16) and says so. The LoRA is rank 16 with random
non-zero weights on every attention projection (speed does not depend on what it learned).

    python benchmarks/bench_panels.py
    python benchmarks/bench_panels.py --size 1024 --steps 50 --dtypes fp16 bf16 --panels 3
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PROMPT = "古风，水墨画，一个黑色长发少女，坐在古代书院的教室里，认真听讲，上半身，绿色长裙"
NEGATIVE = "现代风格，数字画，丑陋，变形，嘈杂，模糊，低对比度"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    import torch

    gpu = torch.cuda.is_available()
    parser = argparse.ArgumentParser(prog="python benchmarks/bench_panels.py", description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=1024 if gpu else 128, help="panel width and height in pixels")
    parser.add_argument("--steps", type=int, default=50 if gpu else 4, help="inference steps per panel")
    parser.add_argument("--cfg", type=float, default=4.0, help="classifier-free guidance scale (the baseline's 4)")
    parser.add_argument("--panels", type=int, default=2, help="timed panels per configuration (after one warm-up)")
    parser.add_argument("--dtypes", nargs="+", default=["fp16", "bf16"] if gpu else ["bf16"],
                        choices=["fp16", "bf16", "fp32"], help="precisions to compare")
    parser.add_argument("--rank", type=int, default=16, help="rank of the benchmark LoRA")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--weights", choices=["auto", "real", "offline"], default=None,
                        help="which weights to load (default: $KOLORS_KIT_WEIGHTS or auto)")
    return parser.parse_args(argv)


def random_lora(unet, path: Path, rank: int) -> Path:
    """A rank-``rank`` LoRA with random non-zero weights on every to_q/to_k/to_v/to_out of the UNet."""
    import torch

    from helpers.lora import DEFAULT_TARGETS, save_lora

    generator = torch.Generator().manual_seed(0)
    state = {}
    for name, module in unet.named_modules():
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in DEFAULT_TARGETS:
            state[f"{name}.lora_A.default.weight"] = torch.randn(rank, module.in_features, generator=generator) * 0.01
            state[f"{name}.lora_B.default.weight"] = torch.randn(module.out_features, rank, generator=generator) * 0.01
    meta = {"rank": rank, "alpha": float(rank), "target_modules": list(DEFAULT_TARGETS), "base_model": "Kwai-Kolors/Kolors",
            "steps": 0, "trigger": None, "dataset_fingerprint": None, "note": "random weights for a speed benchmark"}
    return save_lora(state, path, meta)


def time_panels(pipe, args, device: str) -> float:
    """Mean seconds per panel over ``args.panels`` panels, after one warm-up."""
    import torch

    def one(seed: int) -> None:
        pipe(prompt=PROMPT, negative_prompt=NEGATIVE, cfg_scale=args.cfg, num_inference_steps=args.steps,
             height=args.size, width=args.size, seed=seed, progress_bar_cmd=lambda x: x)
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    one(0)
    start = time.perf_counter()
    for k in range(args.panels):
        one(k + 1)
    return (time.perf_counter() - start) / args.panels


def main(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from helpers.kolors import load_pipeline, pick_device
    from helpers.lora import apply_lora, fuse_lora
    from helpers.models import resolve_models

    device = pick_device(args.device)
    models = resolve_models(("text_encoder", "unet", "vae"), args.weights)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in args.dtypes:
            pipe = load_pipeline(models, device=device, dtype=dtype)
            lora = random_lora(pipe.unet, Path(tmp) / f"bench-{dtype}.safetensors", args.rank)
            for config in tqdm(["base", "lora", "lora-fused"], desc=f"{dtype} configurations"):
                if config == "lora":
                    apply_lora(pipe, lora)
                elif config == "lora-fused":
                    fuse_lora(pipe)
                rows.append((dtype, config, time_panels(pipe, args, device)))
            del pipe
            if device.startswith("cuda"):
                torch.cuda.empty_cache()

    where = torch.cuda.get_device_name(0) if device.startswith("cuda") else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\nseconds per panel: {args.size}x{args.size}, {args.steps} steps, cfg {args.cfg}, "
          f"{args.panels} timed panels each; {where}; weights: {models.weights}")
    if not device.startswith("cuda"):
        print("(no GPU here: a small CPU setting; the competition's 1024 px / 50 steps needs a GPU)")
    print(f"{'precision':10s} {'base':>10s} {'lora':>10s} {'lora-fused':>12s} {'lora/base':>10s} {'fused/base':>11s}")
    for dtype in args.dtypes:
        got = {config: seconds for d, config, seconds in rows if d == dtype}
        print(f"{dtype:10s} {got['base']:10.2f} {got['lora']:10.2f} {got['lora-fused']:12.2f} "
              f"{got['lora'] / got['base']:10.2f} {got['lora-fused'] / got['base']:11.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
