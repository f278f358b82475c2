"""Train a Kolors LoRA with DiffSynth's own trainer: cached conditioning, samples, checkpoints, resume.

The lesson is DiffSynth 1.1.9's ``LightningModelForT2ILoRA`` (its LoRA injection, its
``training_step`` and loss, its ``TextImageDataset``), subclassed as DiffSynth's Kolors
example does. What this module adds around it:

- **cached conditioning** (``helpers.cache``): captions and images are encoded once, so
  training holds the UNet alone, not the 12 GB ChatGLM encoder and the VAE;
- a small Lightning ``Trainer`` set-up that runs on a GPU *or* a CPU (DiffSynth's
  ``launch_training_task`` insists on a GPU);
- checkpoints that can really be resumed (LoRA weights, optimizer state and step count;
  DiffSynth's own checkpoint keeps the LoRA weights only);
- ``loss.csv`` + a loss curve, and sample images from fixed prompts and seeds at each
  checkpoint (and before the first step);
- the LoRA file, saved with its rank, alpha, target modules and data fingerprint in its
  metadata (``helpers.lora.save_lora``).

Outputs: ``<outputs>/lora/<run_name>/`` with ``lora.safetensors``, ``checkpoints/``,
``loss.csv``, ``loss.png``, ``samples/step-NNNNNN/`` and ``run.json``.

Taught in ``notebooks/03_train_lora.ipynb``. Command line: ``python -m helpers.train --help``.
"""

from __future__ import annotations

import argparse
import csv
import gc
import os
import resource
import shutil
import sys
import time
from pathlib import Path

import torch

from .cache import (ConditioningCache, DatasetError, CachedLatentDataset, autocast_for, dataset_fingerprint,
                    encode_dataset, encoder_id, read_metadata, use_cached_conditioning)
from .io import atomic_path, write_json
from .paths import outputs_dir

BASE_MODEL = "Kwai-Kolors/Kolors"
TRAIN_TIMESTEPS = 1100  # DiffSynth's Kolors example: pipe.scheduler.set_timesteps(1100)
DEFAULT_SAMPLE_PROMPTS = [
    "二次元，一个紫色短发小女孩，穿着粉色的衣服，在家中沙发上坐着，双手托着腮，很无聊，全身",
    "二次元，一个紫色短发小女孩，穿着粉色的衣服，走在春天的公园里，阳光明媚，全身",
]
DEFAULT_NEGATIVE = "丑陋、变形、嘈杂、模糊、低对比度"
# precision option -> (weights dtype, Lightning precision)
PRECISIONS = {"bf16": (torch.bfloat16, "bf16-mixed"), "16-mixed": (torch.float16, "16-mixed"),
              "16": (torch.float16, "16-mixed"), "32": (torch.float32, "32-true")}


# ----------------------------------------------------------------------------------------------------------------
# The LightningModule: DiffSynth's, with a UNet-only mode and resumable checkpoints
# ----------------------------------------------------------------------------------------------------------------

def _lightning_module_base():
    from diffsynth.trainers.text_to_image import LightningModelForT2ILoRA

    return LightningModelForT2ILoRA


class KolorsLoRA(_lightning_module_base()):
    """DiffSynth's ``LightningModelForT2ILoRA`` for Kolors, as in its ``train_kolors_lora.py`` example.

    ``model_paths`` go to DiffSynth's ``ModelManager``: text encoder + UNet + VAE for the
    baseline's way (encode every step), or UNet (+ VAE for sample images only) with a
    ``cache`` for cached conditioning. ``training_step``, the loss and the LoRA injection are
    DiffSynth's. Checkpoints hold the LoRA weights, the optimizer state and the step (not the
    frozen 2.6 B UNet), so Lightning can resume them. Taught in ``notebooks/03_train_lora.ipynb``.
    """

    def __init__(self, model_paths, torch_dtype=torch.bfloat16, learning_rate=1e-4, use_gradient_checkpointing=True,
                 lora_rank=16, lora_alpha=16.0, lora_target_modules="to_q,to_k,to_v,to_out",
                 init_lora_weights="kaiming", cache: ConditioningCache | None = None, run_info: dict | None = None):
        from diffsynth import ModelManager, SDXLImagePipeline

        super().__init__(learning_rate=learning_rate, use_gradient_checkpointing=use_gradient_checkpointing)
        manager = ModelManager(torch_dtype=torch_dtype, device="cpu", file_path_list=[str(p) for p in model_paths])
        self.pipe = SDXLImagePipeline.from_model_manager(manager)
        del manager
        if self.pipe.unet is None:
            raise RuntimeError(f"DiffSynth did not recognise a Kolors UNet among {model_paths}")
        if cache is not None:
            self.pipe.text_encoder_kolors = None
            self.pipe.vae_encoder = None  # latents come from the cache; the decoder stays for samples
            use_cached_conditioning(self.pipe, cache)
        else:
            if self.pipe.text_encoder_kolors is None or self.pipe.vae_encoder is None:
                raise RuntimeError("training without the cache needs the Kolors text encoder and the VAE in model_paths")
            self.pipe.scheduler.set_timesteps(TRAIN_TIMESTEPS)
            self.pipe.vae_encoder.to(torch_dtype)
        self.cached = cache is not None
        self.freeze_parameters()
        self.add_lora_to_model(self.pipe.denoising_model(), lora_rank=lora_rank, lora_alpha=lora_alpha,
                               lora_target_modules=lora_target_modules, init_lora_weights=init_lora_weights)
        self.run_info = dict(run_info or {})
        self.strict_loading = False  # checkpoints hold the LoRA weights only, not the frozen UNet

    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        """The trained LoRA weights, peft keys on DiffSynth's UNet names (what DiffSynth's checkpoint keeps)."""
        lora: dict = {}
        _lightning_module_base().on_save_checkpoint(self, lora)
        return lora

    def on_save_checkpoint(self, checkpoint):
        # DiffSynth clears the whole checkpoint (optimizer and step included), so it cannot be resumed.
        # Keep Lightning's bookkeeping; replace the 2.6 B frozen weights with the LoRA ones.
        checkpoint["state_dict"] = {f"pipe.unet.{name}": value for name, value in self.lora_state_dict().items()}
        checkpoint["kolors_kit"] = self.run_info

    def on_load_checkpoint(self, checkpoint):
        saved = checkpoint.get("kolors_kit", {})
        changed = {k: (saved.get(k), v) for k, v in self.run_info.items()
                   if k in RESUME_MUST_MATCH and saved.get(k) != v}
        if changed:
            raise ValueError("cannot resume: the checkpoint was trained with other settings "
                             + ", ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in changed.items())
                             + ". Resume with the same settings, or start a new --run_name.")
        expected = {f"pipe.unet.{name}" for name in self.lora_state_dict()}
        missing = expected - set(checkpoint.get("state_dict", {}))
        if missing:
            raise ValueError(f"checkpoint lacks {len(missing)} LoRA weights (e.g. {sorted(missing)[0]}); "
                             "it was not written by this trainer")


RESUME_MUST_MATCH = ("lora_rank", "lora_alpha", "lora_target_modules", "height", "width", "dataset_fingerprint",
                     "precision", "learning_rate", "batch_size")


# ----------------------------------------------------------------------------------------------------------------
# Callbacks: loss log, sample images, checkpoints
# ----------------------------------------------------------------------------------------------------------------

def _callback_base():
    import lightning as pl

    return pl.Callback


class LossLogger(_callback_base()):
    """Appends ``step,loss,lr,seconds`` to ``loss.csv`` after every optimizer step (kept across resumes)."""

    FIELDS = ["step", "loss", "lr", "seconds"]

    def __init__(self, path: Path):
        self.path = Path(path)
        self.pending: list[float] = []
        self.last_step = -1
        self.started: float | None = None
        self.offset = 0.0

    def on_train_start(self, trainer, pl_module):
        rows = read_loss_csv(self.path)
        rows = [r for r in rows if r["step"] <= trainer.global_step]  # steps after the checkpoint are redone
        self.offset = rows[-1]["seconds"] if rows else 0.0
        with atomic_path(self.path, overwrite=True) as tmp:
            with open(tmp, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=self.FIELDS)
                writer.writeheader()
                writer.writerows(rows)
        self.last_step = trainer.global_step
        self.started = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.started is None:  # from the first step, not from set-up and the step-0 samples
            self.started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.pending.append(float(loss.detach()))
        if trainer.global_step == self.last_step:
            return  # still accumulating gradients
        self.last_step = trainer.global_step
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
        row = {"step": trainer.global_step, "loss": sum(self.pending) / len(self.pending), "lr": lr,
               "seconds": round(self.offset + time.perf_counter() - (self.started or time.perf_counter()), 3)}
        self.pending = []
        with open(self.path, "a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=self.FIELDS).writerow(row)


class Sampler(_callback_base()):
    """Sample images from fixed prompts and seeds with DiffSynth's pipeline: before step 1, every ``every`` steps, at the end.

    With cached conditioning the prompts were encoded up front and the pipeline holds only
    the UNet (training) and the VAE decoder; ``SDXLImagePipeline.__call__`` runs unchanged.
    """

    def __init__(self, folder: Path, prompts, seeds, negative_prompt: str, every: int, steps: int,
                 height: int, width: int, cfg_scale: float):
        self.folder = Path(folder)
        self.prompts, self.seeds, self.negative_prompt = list(prompts), list(seeds), negative_prompt
        self.every, self.steps, self.height, self.width, self.cfg_scale = every, steps, height, width, cfg_scale
        self.seconds = 0.0

    def sample(self, pl_module, step: int) -> Path:
        folder = self.folder / f"step-{step:06d}"
        if folder.exists() or not self.prompts:
            return folder
        start = time.perf_counter()
        pipe = pl_module.pipe
        pipe.device = pl_module.device
        was_training = pipe.unet.training
        pipe.unet.eval()
        try:
            with torch.no_grad(), autocast_for(str(pl_module.device), pipe.torch_dtype):
                images = {(i, seed): pipe(prompt=prompt, negative_prompt=self.negative_prompt, cfg_scale=self.cfg_scale,
                                          num_inference_steps=self.steps, height=self.height, width=self.width,
                                          seed=seed, progress_bar_cmd=lambda x: x)
                          for i, prompt in enumerate(self.prompts) for seed in self.seeds}
        finally:
            pipe.scheduler.set_timesteps(TRAIN_TIMESTEPS)  # sampling changed them; training draws from these
            pipe.unet.train(was_training)
        from .io import save_image

        tmp = folder.with_name(folder.name + ".part")
        shutil.rmtree(tmp, ignore_errors=True)
        for (i, seed), image in images.items():
            save_image(image, tmp / f"prompt{i}-seed{seed}.png")
        tmp.rename(folder)
        self.seconds += time.perf_counter() - start
        return folder

    def on_train_start(self, trainer, pl_module):
        if trainer.global_step == 0:
            self.sample(pl_module, 0)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if self.every and step and step % self.every == 0:
            self.sample(pl_module, step)

    def on_train_end(self, trainer, pl_module):
        if trainer.global_step >= trainer.max_steps:
            self.sample(pl_module, trainer.global_step)


class Checkpointer(_callback_base()):
    """Saves a resumable checkpoint every ``every`` steps and at the end; keeps the newest ``keep``.

    ``stop_after`` stops the run after that many steps, as an interruption would (the
    tests and the notebook use it to show resuming).
    """

    def __init__(self, folder: Path, every: int, keep: int = 2, stop_after: int | None = None):
        self.folder, self.every, self.keep, self.stop_after = Path(folder), every, keep, stop_after
        self.last_step = -1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step == self.last_step:
            return
        self.last_step = step
        stop = self.stop_after is not None and step >= self.stop_after
        if (self.every and step % self.every == 0) or step >= trainer.max_steps or stop:
            self.save(trainer, step)
        if stop and step < trainer.max_steps:
            pl_module.print(f"stopping after step {step} (stop_after_steps); continue with --resume")
            trainer.should_stop = True

    def save(self, trainer, step: int) -> Path:
        path = self.folder / f"step-{step:06d}.ckpt"
        if not path.exists():
            with atomic_path(path) as tmp:
                trainer.save_checkpoint(tmp)
        for old in list_checkpoints(self.folder)[:-self.keep] if self.keep > 0 else []:
            old.unlink(missing_ok=True)
        return path


def list_checkpoints(folder: Path) -> list[Path]:
    """Checkpoints of a run, oldest first."""
    return sorted(Path(folder).glob("step-*.ckpt"))


def read_loss_csv(path: Path) -> list[dict]:
    """Rows of a run's ``loss.csv`` as dicts with numbers (empty list when there is none)."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return [{"step": int(r["step"]), "loss": float(r["loss"]), "lr": float(r["lr"]), "seconds": float(r["seconds"])}
                for r in csv.DictReader(handle)]


def plot_loss(csv_path: Path, png_path: Path | None = None, title: str = "", window: int = 10):
    """Loss per step and its moving average; saved to ``png_path`` when given. Returns the figure."""
    import matplotlib

    if png_path is not None and "ipykernel" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_loss_csv(csv_path)
    steps, losses = [r["step"] for r in rows], [r["loss"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(steps, losses, ".-", alpha=0.4, label="loss per step")
    if len(losses) >= 2:
        w = max(1, min(window, len(losses) // 2))
        avg = [sum(losses[max(0, i - w + 1):i + 1]) / len(losses[max(0, i - w + 1):i + 1]) for i in range(len(losses))]
        ax.plot(steps, avg, "-", label=f"moving average ({w})")
    ax.set_xlabel("step")
    ax.set_ylabel("MSE loss (DiffSynth)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    if png_path is not None:
        with atomic_path(png_path, overwrite=True) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    return fig


def sample_grid(samples_dir: Path, title: str = ""):
    """All sample images of a run in one figure: a row per checkpoint step, a column per prompt/seed."""
    import matplotlib.pyplot as plt
    from PIL import Image

    steps = sorted(p for p in Path(samples_dir).glob("step-*") if p.is_dir())
    if not steps:
        raise FileNotFoundError(f"no samples under {samples_dir}")
    names = sorted(p.name for p in steps[0].glob("*.png"))
    fig, axes = plt.subplots(len(steps), len(names), figsize=(2.2 * len(names), 2.2 * len(steps)), squeeze=False)
    for r, step in enumerate(steps):
        for c, name in enumerate(names):
            ax = axes[r][c]
            if (step / name).is_file():
                ax.imshow(Image.open(step / name))
            ax.set_xticks([]), ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(step.name)
            if r == 0:
                ax.set_title(name.removesuffix(".png"), fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------------------------
# The run: arguments, cache, module, trainer, LoRA file
# ----------------------------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options: DiffSynth's own (``add_general_parsers``) plus the kit's; checked."""
    from diffsynth.trainers.text_to_image import add_general_parsers

    parser = argparse.ArgumentParser(
        prog="python -m helpers.train",
        description="Train a Kolors LoRA with DiffSynth's trainer, on cached conditioning, with samples, "
                    "checkpoints and resume. Writes <output_path>/lora/<run_name>/.")
    parser.add_argument("--lora_target_modules", type=str, default="to_q,to_k,to_v,to_out",
                        help="UNet layers that get a LoRA (comma-separated, DiffSynth's names)")
    add_general_parsers(parser)
    parser.set_defaults(output_path=None, precision=None, lora_rank=16, lora_alpha=16.0, center_crop=True,
                        use_gradient_checkpointing=True, steps_per_epoch=500)
    kit = parser.add_argument_group("kit options")
    kit.add_argument("--no_gradient_checkpointing", dest="use_gradient_checkpointing", action="store_false",
                     help="keep all activations (faster on a small CPU run, more memory at 1024 px)")
    kit.add_argument("--resolution", type=int, default=None,
                     help="square training size in pixels (sets --height and --width; multiple of 64)")
    kit.add_argument("--max_steps", type=int, default=None,
                     help="optimizer steps to train (default: max_epochs x steps_per_epoch, DiffSynth's meaning of epoch)")
    kit.add_argument("--seed", type=int, default=0, help="seed for the LoRA initialisation, data order and noise")
    kit.add_argument("--run_name", type=str, default="kolors-lora", help="folder name under <output_path>/lora/")
    kit.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CKPT",
                     help="continue the run from a checkpoint (default: its newest) to --max_steps; "
                          "restores LoRA weights, optimizer state and step")
    kit.add_argument("--overwrite", action="store_true", help="delete an existing run folder of the same name first")
    kit.add_argument("--no_cache", dest="cache", action="store_false",
                     help="the baseline's way: text encoder and VAE in memory, encoding every step")
    kit.add_argument("--cache_dir", type=str, default=None,
                     help="conditioning cache folder (default: <output_path>/cache/conditioning)")
    kit.add_argument("--checkpoint_every", type=int, default=100, help="save a resumable checkpoint every N steps")
    kit.add_argument("--keep_checkpoints", type=int, default=2, help="how many newest checkpoints to keep")
    kit.add_argument("--stop_after_steps", type=int, default=None,
                     help="stop after N steps as an interruption would (checkpoint saved); continue with --resume")
    kit.add_argument("--sample_every", type=int, default=None,
                     help="sample images every N steps (default: --checkpoint_every; 0: only before and after)")
    kit.add_argument("--sample_prompts", nargs="*", default=DEFAULT_SAMPLE_PROMPTS,
                     help="fixed prompts for the sample images (none: no samples)")
    kit.add_argument("--sample_seeds", nargs="+", type=int, default=[0], help="seeds for the sample images")
    kit.add_argument("--negative_prompt", type=str, default=DEFAULT_NEGATIVE, help="negative prompt for samples")
    kit.add_argument("--sample_steps", type=int, default=30, help="inference steps per sample image")
    kit.add_argument("--sample_size", type=int, default=None, help="sample image size (default: training size)")
    kit.add_argument("--cfg_scale", type=float, default=4.0, help="classifier-free guidance for samples (baseline: 4)")
    kit.add_argument("--trigger", type=str, default=None,
                     help="caption trigger word recorded in the LoRA (default: the captions' common first word)")
    kit.add_argument("--weights", choices=["auto", "real", "offline"], default=None,
                     help="which model weights (default: $KOLORS_KIT_WEIGHTS or auto; see helpers.models)")
    kit.add_argument("--device", type=str, default=None, help="cuda or cpu (default: cuda when available)")
    args = parser.parse_args(argv)
    return check_args(args)


def check_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill derived values and refuse what this trainer does not do, with what to do instead."""
    if args.resolution is not None:
        args.height = args.width = args.resolution
    for name in ("height", "width"):
        if getattr(args, name) % 64:
            raise ValueError(f"--{name} {getattr(args, name)} is not a multiple of 64 (DiffSynth rounds sampling sizes to 64)")
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.precision is None:
        args.precision = "16-mixed" if args.device.startswith("cuda") else "bf16"
    if args.precision in ("16", "16-mixed") and not args.device.startswith("cuda"):
        raise ValueError("fp16 mixed precision needs a GPU; on a CPU use --precision bf16 (or 32)")
    if args.max_steps is None:
        args.max_steps = args.max_epochs * args.steps_per_epoch
    if args.max_steps < 1:
        raise ValueError("--max_steps must be at least 1")
    if args.stop_after_steps is not None and not 0 < args.stop_after_steps <= args.max_steps:
        raise ValueError("--stop_after_steps must be between 1 and --max_steps")
    if args.sample_every is None:
        args.sample_every = args.checkpoint_every
    args.sample_size = args.sample_size or args.height
    if args.cache and (args.random_flip or not args.center_crop):
        raise ValueError("cached latents need fixed crops: drop --random_flip, or train with --no_cache")
    if args.training_strategy != "auto":
        raise ValueError("DeepSpeed strategies are not supported here; use DiffSynth's launch_training_task on a GPU cluster")
    if args.use_swanlab:
        raise ValueError("SwanLab logging is not wired in; the run writes loss.csv and loss.png")
    if args.modelscope_model_id or args.modelscope_access_token:
        raise ValueError("upload after training with helpers.lora (token from MODELSCOPE_API_TOKEN, never the command line)")
    if args.pretrained_lora_path:
        raise ValueError("to continue a run use --resume (restores the optimizer and step too)")
    return args


def run_folder(args) -> Path:
    return Path(args.output_path or outputs_dir()) / "lora" / args.run_name


def prepare_run_folder(args) -> Path:
    """Create the run folder; refuse to mix a new run into an old one unless --resume or --overwrite."""
    folder = run_folder(args)
    if args.resume:
        if not folder.is_dir():
            raise FileNotFoundError(f"nothing to resume: {folder} does not exist")
    elif folder.exists() and any(folder.iterdir()):
        if not args.overwrite:
            from .io import OutputExistsError

            raise OutputExistsError(f"{folder} already holds a run; pass --resume to continue it, --overwrite to "
                                    "start over, or choose another --run_name")
        shutil.rmtree(folder)
    (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
    return folder


def find_resume_checkpoint(args, folder: Path) -> Path | None:
    if not args.resume:
        return None
    if args.resume != "latest":
        path = Path(args.resume)
        if not path.is_file():
            raise FileNotFoundError(f"--resume {path}: no such checkpoint")
        return path
    found = list_checkpoints(folder / "checkpoints")
    if not found:
        raise FileNotFoundError(f"nothing to resume: no checkpoints under {folder / 'checkpoints'}")
    return found[-1]


def caption_trigger(dataset_path) -> str:
    """The first word (before a comma or space) shared by every caption, or '' when they share none."""
    import re

    firsts = {re.split(r"[，,\s]", t.strip(), maxsplit=1)[0] for t in read_metadata(dataset_path)["text"]}
    return firsts.pop() if len(firsts) == 1 else ""


def resolve_run_models(args):
    """Resolve the text encoder, UNet and VAE (the fp16-fix VAE for fp16 training, as the baseline)."""
    from .models import resolve_models

    vae = "fp16_vae" if PRECISIONS[args.precision][0] == torch.float16 else "vae"
    return resolve_models(["text_encoder", "unet", vae], mode=args.weights), vae


def build_cache(args, models, vae_key: str):
    """Encode the data set's captions and images, plus the sample prompts, once; the encoders are freed after.

    Loads only the text encoder and VAE (``ModelManager``), never the UNet; skips loading
    them at all when every entry is already cached.
    """
    from diffsynth import ModelManager, SDXLImagePipeline

    dtype = PRECISIONS[args.precision][0]
    cache = ConditioningCache(args.cache_dir or Path(args.output_path or outputs_dir()) / "cache" / "conditioning",
                              text_id=encoder_id(models.text_encoder, dtype, models.sources["text_encoder"]),
                              image_id=encoder_id(models.paths[vae_key], dtype, models.sources[vae_key]))
    state = {}

    def load_encoders():
        manager = ModelManager(torch_dtype=dtype, device=args.device,
                               file_path_list=[str(models.text_encoder), str(models.paths[vae_key])])
        state["pipe"] = SDXLImagePipeline.from_model_manager(manager)
        return state["pipe"]

    try:
        report = encode_dataset(load_encoders, args.dataset_path, cache, args.height, args.width, center_crop=True,
                                extra_prompts=args.sample_prompts or [],
                                negative_prompts=[args.negative_prompt] if args.sample_prompts else [])
    finally:
        state.clear()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return cache, report


def make_run_info(args, models, fingerprint: str) -> dict:
    """Settings stored in every checkpoint; a resume with different ones is refused."""
    return {"lora_rank": args.lora_rank, "lora_alpha": args.lora_alpha, "lora_target_modules": args.lora_target_modules,
            "height": args.height, "width": args.width, "dataset_fingerprint": fingerprint,
            "precision": args.precision, "learning_rate": args.learning_rate, "batch_size": args.batch_size,
            "weights": models.weights}


def build_module(args, models, vae_key: str, cache: ConditioningCache | None, run_info: dict) -> KolorsLoRA:
    """DiffSynth's LoRA LightningModule: the UNet (+ VAE decoder for samples) with a cache, all three without."""
    dtype = PRECISIONS[args.precision][0]
    if cache is not None:
        paths = [models.unet] + ([models.paths[vae_key]] if args.sample_prompts else [])
    else:
        paths = [models.text_encoder, models.unet, models.paths[vae_key]]
    return KolorsLoRA(paths, torch_dtype=dtype, learning_rate=args.learning_rate,
                      use_gradient_checkpointing=args.use_gradient_checkpointing, lora_rank=args.lora_rank,
                      lora_alpha=args.lora_alpha, lora_target_modules=args.lora_target_modules,
                      init_lora_weights=args.init_lora_weights, cache=cache, run_info=run_info)


def make_dataloader(args, cache_report=None):
    """DiffSynth's dataset (``TextImageDataset``) or its cached twin, one "epoch" as long as the run."""
    from diffsynth.data.simple_text_image import TextImageDataset

    length = args.max_steps * args.batch_size * args.accumulate_grad_batches
    if cache_report is not None:
        dataset = CachedLatentDataset(cache_report.items, steps_per_epoch=length)
    else:
        dataset = TextImageDataset(args.dataset_path, steps_per_epoch=length, height=args.height, width=args.width,
                                   center_crop=args.center_crop, random_flip=args.random_flip)
    return torch.utils.data.DataLoader(dataset, shuffle=True, batch_size=args.batch_size,
                                       num_workers=args.dataloader_num_workers)


def make_trainer(args, callbacks, progress: bool = True):
    """A Lightning ``Trainer`` like DiffSynth's ``launch_training_task``'s, on a GPU or a CPU, counted in steps."""
    import lightning as pl

    return pl.Trainer(
        accelerator="gpu" if args.device.startswith("cuda") else "cpu", devices=1,
        precision=PRECISIONS[args.precision][1], max_steps=args.max_steps, max_epochs=-1,
        accumulate_grad_batches=args.accumulate_grad_batches, callbacks=callbacks, logger=False,
        enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=progress,
        num_sanity_val_steps=0, default_root_dir=None,
    )


def make_callbacks(args, folder: Path) -> list:
    callbacks = [LossLogger(folder / "loss.csv"),
                 Checkpointer(folder / "checkpoints", args.checkpoint_every, args.keep_checkpoints, args.stop_after_steps)]
    if args.sample_prompts:
        callbacks.insert(1, Sampler(folder / "samples", args.sample_prompts, args.sample_seeds, args.negative_prompt,
                                    args.sample_every, args.sample_steps, args.sample_size, args.sample_size,
                                    args.cfg_scale))
    return callbacks


def lora_metadata(args, models, fingerprint: str, steps: int) -> dict:
    """What the LoRA file records about itself (the contract with ``helpers.lora``)."""
    return {
        "rank": args.lora_rank, "alpha": args.lora_alpha,
        "target_modules": args.lora_target_modules.split(","), "base_model": BASE_MODEL,
        "steps": steps, "trigger": args.trigger if args.trigger is not None else caption_trigger(args.dataset_path),
        "dataset_fingerprint": fingerprint, "weights": models.weights,
        "resolution": f"{args.height}x{args.width}", "learning_rate": args.learning_rate, "seed": args.seed,
        "precision": args.precision, "key_format": "diffsynth-peft",
        "trainer": "diffsynth 1.1.9 LightningModelForT2ILoRA (helpers.train)",
    }


def save_trained_lora(state_dict, path: Path, metadata: dict) -> Path:
    """Write the LoRA with ``helpers.lora.save_lora`` (metadata in the safetensors header)."""
    from .lora import save_lora

    return save_lora(state_dict, path, metadata)


def peak_memory_gib(device: str) -> dict:
    """Peak resident memory of this process (and of the GPU when training on one), in GiB."""
    peak = {"peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2, 2)}
    if device.startswith("cuda") and torch.cuda.is_available():
        peak["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 1024 ** 3, 2)
    return peak


def print_summary(args, models, n_images: int, folder: Path, resume_from) -> None:
    mode = "cached conditioning (UNet only in memory)" if args.cache else "baseline: text encoder + VAE run every step"
    print("***** Kolors LoRA training (DiffSynth LightningModelForT2ILoRA) *****")
    for key, value in [("images", n_images), ("steps", args.max_steps), ("batch size", args.batch_size),
                       ("resolution", f"{args.height}x{args.width}"), ("precision", args.precision),
                       ("device", args.device), ("LoRA", f"rank {args.lora_rank}, alpha {args.lora_alpha}, "
                                                         f"{args.lora_target_modules}"),
                       ("learning rate", args.learning_rate), ("gradient checkpointing", args.use_gradient_checkpointing),
                       ("conditioning", mode), ("weights", models.weights), ("run folder", folder),
                       ("resume from", resume_from or "-")]:
        print(f"  {key:24s} {value}")
    sys.stdout.flush()


def finish_run(args, models, module, trainer, callbacks, fingerprint: str, report=None, seconds: dict | None = None,
               resume_from=None) -> dict:
    """After ``trainer.fit``: loss curve, the LoRA file (when the target step was reached) and ``run.json``.

    Returns the run summary. Used by :func:`main` and ``notebooks/03_train_lora.ipynb``.
    """
    folder = run_folder(args)
    done = trainer.global_step >= args.max_steps
    rows = read_loss_csv(folder / "loss.csv")
    plot_loss(folder / "loss.csv", folder / "loss.png", title=f"{args.run_name} (weights: {models.weights})")
    import matplotlib.pyplot as plt

    plt.close("all")
    lora_path = None
    if done:
        metadata = lora_metadata(args, models, fingerprint, trainer.global_step)
        lora_path = save_trained_lora(module.lora_state_dict(), folder / "lora.safetensors", metadata)
    sampler = next((c for c in callbacks if isinstance(c, Sampler)), None)
    steps_timed = [r for r in rows if r["step"] > 0]
    summary = {
        "run": args.run_name, "folder": str(folder), "finished": done, "global_step": trainer.global_step,
        "target_steps": args.max_steps, "resumed_from": str(resume_from) if resume_from else None,
        "lora": str(lora_path) if lora_path else None, "dataset_fingerprint": fingerprint,
        "last_loss": rows[-1]["loss"] if rows else None, "cached_conditioning": args.cache,
        "cache": report.summary() if report else None, "skipped_images": report.skipped if report else [],
        "seconds": {**{k: round(v, 1) for k, v in (seconds or {}).items()},
                    "samples": round(sampler.seconds, 1) if sampler else 0.0},
        "train_seconds_logged": steps_timed[-1]["seconds"] if steps_timed else None,
        **peak_memory_gib(args.device), "device": args.device,
        "settings": {k: v for k, v in vars(args).items() if k != "modelscope_access_token"},
        **models.record(),
    }
    write_json(folder / "run.json", summary, overwrite=True)
    return summary


def main(args: argparse.Namespace) -> dict:
    """Run a training as ``args`` say; returns the run summary (also written to ``run.json``)."""
    start = time.perf_counter()
    folder = prepare_run_folder(args)
    resume_from = find_resume_checkpoint(args, folder)
    fingerprint = dataset_fingerprint(args.dataset_path)
    models, vae_key = resolve_run_models(args)
    print_summary(args, models, len(read_metadata(args.dataset_path)), folder, resume_from)

    import lightning as pl

    cache = report = None
    if args.cache:
        cache, report = build_cache(args, models, vae_key)
        print("conditioning cache:", report.summary())
        for path, why in report.skipped:
            print(f"  skipped {path}: {why}")
    pl.seed_everything(args.seed, verbose=False)
    load_start = time.perf_counter()
    module = build_module(args, models, vae_key, cache, make_run_info(args, models, fingerprint))
    load_seconds = time.perf_counter() - load_start
    loader = make_dataloader(args, report)
    callbacks = make_callbacks(args, folder)
    trainer = make_trainer(args, callbacks)
    fit_start = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader, ckpt_path=str(resume_from) if resume_from else None)
    fit_seconds = time.perf_counter() - fit_start

    summary = finish_run(args, models, module, trainer, callbacks, fingerprint, report,
                         {"total": time.perf_counter() - start, "load_unet": load_seconds, "fit": fit_seconds},
                         resume_from)
    done = summary["finished"]
    state = "finished" if done else f"stopped at step {trainer.global_step} of {args.max_steps} (continue with --resume)"
    print(f"***** {state}; {summary['seconds']['total']} s, peak RSS {summary['peak_rss_gib']} GiB; "
          f"weights: {models.weights} *****")
    if summary["lora"]:
        print(f"LoRA: {summary['lora']}")
    del module, trainer
    gc.collect()
    return summary


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        main(parse_args())
    except (DatasetError, ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
