"""Cached conditioning: encode captions and images once, train the UNet LoRA without the encoders.

DiffSynth's trainer keeps the Kolors text encoder (ChatGLM3-6B, about 12 GB in fp16) and
the VAE in memory and runs both on every step, although a caption and an image give the
same embedding and latent every time. Here both are computed once, with DiffSynth's own
calls (``pipe.encode_prompt`` and ``pipe.vae_encoder``), and written to disk; training
then loads the UNet alone. Two small pieces plug the cache into DiffSynth unchanged:

- :class:`CachedPrompter` answers ``pipe.encode_prompt`` from the cache, so DiffSynth's
  ``training_step`` and its sampling pipeline run as they are;
- :class:`CachedLatentDataset` yields ``batch["latents"]``, which DiffSynth's
  ``training_step`` already uses instead of running the VAE.

Cache files are safetensors named by a fingerprint of what went in (caption, or image
bytes + resolution + crop) under a folder named by the encoder that made them, so a
changed caption, image, size or model never reads a stale entry.

Taught in ``notebooks/03_train_lora.ipynb``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from .io import atomic_path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


class DatasetError(ValueError):
    """The training folder is missing or not in DiffSynth's ``train/metadata.csv`` layout."""


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_metadata(dataset_path: str | os.PathLike) -> pd.DataFrame:
    """Read ``<dataset_path>/train/metadata.csv`` (columns ``file_name,text``), checked.

    Raises :class:`DatasetError` with what to do when the folder or the columns are missing.
    """
    csv = Path(dataset_path) / "train" / "metadata.csv"
    if not csv.is_file():
        raise DatasetError(
            f"No training set at {dataset_path}: expected {csv} (columns file_name,text) with the images beside it. "
            "Run notebooks/02_data.ipynb first, or point dataset_path at a folder in DiffSynth's layout.")
    frame = pd.read_csv(csv)
    missing = {"file_name", "text"} - set(frame.columns)
    if missing:
        raise DatasetError(f"{csv} lacks column(s) {sorted(missing)}; it needs file_name,text")
    if frame.empty:
        raise DatasetError(f"{csv} lists no images")
    frame["text"] = frame["text"].fillna("").astype(str)
    return frame


def dataset_fingerprint(dataset_path: str | os.PathLike) -> str:
    """A short hash of every (file name, caption, image bytes) row: same data, same fingerprint."""
    frame = read_metadata(dataset_path)
    digest = hashlib.sha256()
    for name, text in sorted(zip(frame["file_name"].astype(str), frame["text"])):
        path = Path(dataset_path) / "train" / name
        content = sha256_file(path) if path.is_file() else "missing"
        digest.update(f"{name}\t{text}\t{content}\n".encode("utf-8"))
    return digest.hexdigest()[:16]


def encoder_id(path: str | os.PathLike, dtype: torch.dtype, weights: str) -> str:
    """Name of the folder for one encoder's cache entries: its files, their sizes and times, the dtype."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    parts = [str(path.resolve()), str(dtype), weights] + [f"{p.name}:{p.stat().st_size}:{int(p.stat().st_mtime)}" for p in files]
    return sha256_text("|".join(parts))[:16]


class ConditioningCache:
    """Folder of cached prompt embeddings and image latents (safetensors, one per item)."""

    def __init__(self, root: str | os.PathLike, text_id: str, image_id: str):
        self.root = Path(root)
        self.text_dir = self.root / "text" / text_id
        self.latent_dir = self.root / "latents" / image_id

    def text_path(self, caption: str) -> Path:
        return self.text_dir / f"{sha256_text(caption)[:32]}.safetensors"

    def latent_path(self, image_sha: str, height: int, width: int, center_crop: bool) -> Path:
        key = f"{image_sha}|{height}x{width}|{'center' if center_crop else 'random'}"
        return self.latent_dir / f"{sha256_text(key)[:32]}.safetensors"

    def has_text(self, caption: str) -> bool:
        return self.text_path(caption).is_file()

    def save_text(self, caption: str, pooled: torch.Tensor, emb: torch.Tensor) -> Path:
        """Store one caption's ``(add_text_embeds, encoder_hidden_states)`` as DiffSynth returns them."""
        from safetensors.torch import save_file

        path = self.text_path(caption)
        with atomic_path(path, overwrite=True) as tmp:
            save_file({"add_text_embeds": pooled.detach().cpu().contiguous(),
                       "encoder_hidden_states": emb.detach().cpu().contiguous()}, str(tmp), metadata={"caption": caption})
        return path

    def load_text(self, caption: str) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        path = self.text_path(caption)
        if not path.is_file():
            raise KeyError(f"caption not in the conditioning cache ({self.text_dir}): {caption!r}. "
                           "Encode it first (helpers.cache.encode_prompts / encode_dataset).")
        return load_file(str(path))

    def save_latents(self, path: Path, latents: torch.Tensor) -> Path:
        from safetensors.torch import save_file

        with atomic_path(path, overwrite=True) as tmp:
            save_file({"latents": latents.detach().cpu().contiguous()}, str(tmp))
        return path


class CachedPrompter:
    """Stands in for DiffSynth's ``KolorsPrompter``: ``encode_prompt`` reads the cache, ChatGLM stays on disk.

    Same signature and return value (``pooled, embeddings``) as ``KolorsPrompter.encode_prompt``,
    so ``SDXLImagePipeline.encode_prompt``, DiffSynth's ``training_step`` and the pipeline's
    ``__call__`` (sampling) work unchanged.
    """

    def __init__(self, cache: ConditioningCache):
        self.cache = cache

    def encode_prompt(self, prompt, clip_skip=1, clip_skip_2=2, positive=True, device="cuda"):
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        entries = [self.cache.load_text(p) for p in prompts]
        pooled = torch.cat([e["add_text_embeds"] for e in entries]).to(device)
        emb = torch.cat([e["encoder_hidden_states"] for e in entries]).to(device)
        return pooled, emb


def use_cached_conditioning(pipe, cache: ConditioningCache, train_timesteps: bool = True):
    """Make a UNet-only ``SDXLImagePipeline`` behave like DiffSynth's Kolors one, prompts from ``cache``.

    ``SDXLImagePipeline.from_model_manager`` switches to Kolors' prompter and scheduler only
    when it sees the ChatGLM encoder; without it we set the same scheduler (DiffSynth's
    Kolors values: ``beta_end=0.014``, 1100 training timesteps) and the cached prompter.
    """
    from diffsynth.schedulers import EnhancedDDIMScheduler

    pipe.prompter = CachedPrompter(cache)
    pipe.scheduler = EnhancedDDIMScheduler(beta_end=0.014, num_train_timesteps=1100)
    if train_timesteps:
        pipe.scheduler.set_timesteps(1100)  # as DiffSynth's Kolors training example
    return pipe


def training_image(dataset, index: int) -> torch.Tensor:
    """Image ``index`` of a DiffSynth ``TextImageDataset`` as its ``__getitem__`` prepares it.

    DiffSynth picks a random item per call; the cache needs each item once, so this repeats
    its resize (shorter side to the target) and then applies the dataset's own transform.
    """
    import torchvision
    from PIL import Image
    from torchvision import transforms

    image = Image.open(dataset.path[index]).convert("RGB")
    width, height = image.size
    scale = max(dataset.width / width, dataset.height / height)
    shape = [round(height * scale), round(width * scale)]
    image = torchvision.transforms.functional.resize(image, shape, interpolation=transforms.InterpolationMode.BILINEAR)
    return dataset.image_processor(image)


@dataclass
class CacheReport:
    """What :func:`encode_dataset` did: usable items, skipped files (with the reason), counts."""

    items: list[tuple[str, Path]] = field(default_factory=list)  # (caption, latent file)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, why)
    encoded_images: int = 0
    encoded_captions: int = 0
    reused: int = 0
    seconds: float = 0.0
    loaded_encoders: bool = False

    def summary(self) -> str:
        return (f"{len(self.items)} items cached ({self.encoded_images} images and {self.encoded_captions} captions "
                f"encoded now, {self.reused} images reused), {len(self.skipped)} skipped, {self.seconds:.1f} s"
                + ("" if self.loaded_encoders else "; encoders not loaded"))


def autocast_for(device: str, dtype: torch.dtype):
    """The autocast context Lightning's mixed precision uses, so cached values equal per-step ones."""
    if dtype in (torch.float16, torch.bfloat16):
        return torch.autocast(device_type="cuda" if str(device).startswith("cuda") else "cpu", dtype=dtype)
    return torch.autocast(device_type="cpu", enabled=False)


@torch.no_grad()
def encode_prompts(pipe, cache: ConditioningCache, prompts, positive: bool = True) -> int:
    """Encode captions not yet in ``cache`` with ``pipe.encode_prompt`` (the ChatGLM encoder); returns how many."""
    todo = [p for p in dict.fromkeys(prompts) if not cache.has_text(p)]
    with autocast_for(pipe.device, pipe.torch_dtype):
        for prompt in tqdm(todo, desc="encoding captions", unit="caption", disable=not todo):
            emb = pipe.encode_prompt(prompt, positive=positive)
            cache.save_text(prompt, emb["add_text_embeds"], emb["encoder_hidden_states"])
    return len(todo)


@torch.no_grad()
def encode_dataset(pipe, dataset_path: str | os.PathLike, cache: ConditioningCache, height: int, width: int,
                   center_crop: bool = True, extra_prompts=(), negative_prompts=()) -> CacheReport:
    """Encode every image (VAE) and caption (ChatGLM) of a DiffSynth training folder into ``cache``.

    ``pipe`` is an ``SDXLImagePipeline`` holding the Kolors text encoder and VAE encoder (no
    UNet needed), or a function that loads one: it is called only when something is not
    cached yet, so a second run loads no encoder at all. Images are prepared exactly as
    DiffSynth's ``TextImageDataset`` prepares them; a file that cannot be read is reported in
    ``skipped`` and left out, never fatal. ``extra_prompts`` (sample prompts) and
    ``negative_prompts`` are encoded too, for sample images.
    """
    import time

    from diffsynth.data.simple_text_image import TextImageDataset

    if not center_crop:
        raise ValueError("cached latents need a deterministic crop: use center_crop=True, "
                         "or train without the cache (random crops change every step)")
    start = time.perf_counter()
    read_metadata(dataset_path)  # clear error for a missing or malformed folder
    dataset = TextImageDataset(str(dataset_path), steps_per_epoch=1, height=height, width=width, center_crop=True)
    report = CacheReport()
    plan = []  # (index, caption, latent file)
    for index, (path, caption) in enumerate(zip(dataset.path, dataset.text)):
        try:
            plan.append((index, caption, cache.latent_path(sha256_file(path), height, width, center_crop)))
        except OSError as exc:
            report.skipped.append((str(path), f"{type(exc).__name__}: {exc}"))
    captions = [c for _, c, _ in plan] + list(extra_prompts)
    todo = [p for p in plan if not p[2].is_file()]
    if todo or any(not cache.has_text(c) for c in [*captions, *negative_prompts]):
        if not isinstance(pipe, torch.nn.Module):
            pipe = pipe()  # load the encoders only now
        report.loaded_encoders = True
        with autocast_for(pipe.device, pipe.torch_dtype):
            for index, caption, latent_file in tqdm(todo, desc="encoding images", unit="image"):
                try:
                    image = training_image(dataset, index).unsqueeze(0)
                    latents = pipe.vae_encoder(image.to(dtype=pipe.torch_dtype, device=pipe.device))
                except Exception as exc:  # a bad image is reported and skipped
                    report.skipped.append((dataset.path[index], f"{type(exc).__name__}: {exc}"))
                    continue
                cache.save_latents(latent_file, latents[0])
                report.encoded_images += 1
        report.encoded_captions = encode_prompts(pipe, cache, captions, positive=True)
        report.encoded_captions += encode_prompts(pipe, cache, negative_prompts, positive=False)
    bad = {path for path, _ in report.skipped}
    report.items = [(caption, latent_file) for index, caption, latent_file in plan
                    if dataset.path[index] not in bad and latent_file.is_file()]
    report.reused = len(report.items) - report.encoded_images
    if not report.items:
        raise DatasetError(f"no usable image in {dataset_path}; skipped: {report.skipped[:5]}")
    report.seconds = time.perf_counter() - start
    return report


class CachedLatentDataset(torch.utils.data.Dataset):
    """Cached items served the way DiffSynth's ``TextImageDataset`` serves images.

    ``len`` is ``steps_per_epoch`` and each index picks a random item, as in DiffSynth;
    items carry ``latents`` (DiffSynth's ``training_step`` then skips the VAE) and ``text``
    (looked up by :class:`CachedPrompter`). ``image`` is an empty placeholder: the step
    reads the key but uses the latents.
    """

    def __init__(self, items: list[tuple[str, Path]], steps_per_epoch: int):
        from safetensors.torch import load_file

        if not items:
            raise DatasetError("the cached dataset is empty")
        self.text = [caption for caption, _ in items]
        self.latents = [load_file(str(path))["latents"] for _, path in items]
        self.steps_per_epoch = steps_per_epoch

    def __getitem__(self, index):
        data_id = (int(torch.randint(0, len(self.text), (1,))[0]) + index) % len(self.text)
        return {"text": self.text[data_id], "image": torch.zeros(0), "latents": self.latents[data_id]}

    def __len__(self):
        return self.steps_per_epoch


def synthetic_dataset(folder: str | os.PathLike, n: int = 4, size: int = 128, seed: int = 0,
                      caption: str = "二次元") -> Path:
    """Write ``n`` drawn pictures (coloured shapes) + ``train/metadata.csv`` in DiffSynth's layout.

    For benchmarks and tests, which need a training folder but not a good one; the course
    itself trains on what ``notebooks/02_data.ipynb`` prepares.
    """
    import random

    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    train = Path(folder) / "train"
    train.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        image = Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3)))
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x0, y0 = rng.randrange(size), rng.randrange(size)
            box = [x0, y0, x0 + rng.randrange(8, size // 2), y0 + rng.randrange(8, size // 2)]
            draw.ellipse(box, fill=tuple(rng.randrange(256) for _ in range(3)))
        name = f"{i:04d}.jpg"
        image.save(train / name, quality=95)
        rows.append({"file_name": name, "text": f"{caption}，图{i}"})
    pd.DataFrame(rows).to_csv(train / "metadata.csv", index=False)
    return Path(folder)
