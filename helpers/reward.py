"""A learned preference reward: CLIP embeddings cached once, a small MLP, a pairwise loss.

People rarely agree on a number, but they do pick the better of two images. Pick-a-Pic
stores exactly that: a prompt, two generated images, which one the user preferred (or a
tie). Training a reward on it (seed 003) is cheap when the images and prompts are embedded
with CLIP **once** and cached to disk; the MLP then trains in seconds on the vectors.

The loss is the pairwise (Bradley-Terry) one: with rewards ``r0, r1`` and label ``y``
(1 = image 0 preferred, 0 = image 1, 0.5 = tie), ``BCEWithLogits(r0 - r1, y)``. The figure
that matters is *held-out pair accuracy*: on prompts the MLP never saw, how often does it
put the preferred image first?

- Real data: :func:`read_pickapic_parquet` reads Pick-a-Pic parquet files (``caption``,
  ``jpg_0``/``jpg_1`` bytes, ``label_0``, ``image_0_uid``/``image_1_uid``).
- Offline: :func:`degradation_pairs` makes pairs from the kit's own images, clean vs
  degraded (and mildly vs badly degraded), so there is a real signal to learn: preferring
  the undamaged image. It is labelled ``synthetic-by-construction``; it is not taste.

CLIP is real ViT-L/14 (``models/clip-vit-large-patch14``) or an offline small random CLIP of
the same classes. Taught in ``notebooks/05_beyond_scoring.ipynb``.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from .agreement import DEGRADATIONS, SYNTHETIC_LABEL, degrade
from .extra_models import ExtraSpec, Resolved, pick_device, resolve_extra
from .io import atomic_path, check_writable, save_image, write_text

CLIP_SMALL_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       max_position_embeddings=77)
CLIP_SMALL_VISION = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         patch_size=16, image_size=224)


def _clip_complete(path: Path) -> bool:
    return (path / "config.json").is_file() and (any(path.glob("*.safetensors")) or any(path.glob("*.bin")))


def _build_clip(folder: Path, seed: int) -> None:
    import diffsynth
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    torch.manual_seed(seed)
    config = CLIPConfig(text_config=CLIP_SMALL_TEXT, vision_config=CLIP_SMALL_VISION, projection_dim=128)
    CLIPModel(config).save_pretrained(folder)
    image_processor = CLIPImageProcessor(
        do_resize=True, size={"shortest_edge": 224}, do_center_crop=True, crop_size={"height": 224, "width": 224},
        do_normalize=True, image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
        do_convert_rgb=True, resample=3)
    tokenizer = CLIPTokenizer.from_pretrained(Path(diffsynth.__file__).parent / "tokenizer_configs" / "stable_diffusion" / "tokenizer")
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)


def _download_clip(folder: Path) -> None:
    from modelscope import snapshot_download

    snapshot_download("AI-ModelScope/clip-vit-large-patch14", local_dir=str(folder))


CLIP_SPEC = ExtraSpec("clip", "CLIP ViT-L/14 (image + text towers) for the preference reward",
                      "AI-ModelScope/clip-vit-large-patch14 (ModelScope)", "clip-vit-large-patch14",
                      _clip_complete, _build_clip, _download_clip)


class ClipEmbedder:
    """L2-normalised CLIP image and text embeddings (``transformers.CLIPModel``)."""

    def __init__(self, model, processor, weights: str, path: Path, device: str = "cpu", batch_size: int = 16):
        self.model, self.processor, self.weights, self.path = model, processor, weights, Path(path)
        self.device, self.batch_size = device, batch_size

    @property
    def dim(self) -> int:
        return int(self.model.config.projection_dim)

    @torch.inference_mode()
    def embed_images(self, images: Sequence[Image.Image], progress: bool = False) -> np.ndarray:
        out = []
        for start in tqdm(range(0, len(images), self.batch_size), desc="CLIP images", disable=not progress):
            batch = [im.convert("RGB") for im in images[start:start + self.batch_size]]
            pixels = self.processor(images=batch, return_tensors="pt").pixel_values.to(self.device)
            out.append(torch.nn.functional.normalize(self.model.get_image_features(pixel_values=pixels).float(), dim=-1).cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, self.dim), np.float32)

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        out = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.processor(text=list(texts[start:start + self.batch_size]), return_tensors="pt", padding=True,
                                    truncation=True, max_length=77).to(self.device)
            feats = self.model.get_text_features(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
            out.append(torch.nn.functional.normalize(feats.float(), dim=-1).cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, self.dim), np.float32)


def load_clip_embedder(device: str | None = None, mode: str | None = None, resolved: Resolved | None = None) -> ClipEmbedder:
    """Resolve and load CLIP (real ViT-L/14 or the offline small random one) as a :class:`ClipEmbedder`."""
    from transformers import CLIPModel, CLIPProcessor

    resolved = resolved or resolve_extra(CLIP_SPEC, mode)
    device = pick_device(device)
    model = CLIPModel.from_pretrained(resolved.path).to(device).eval()
    return ClipEmbedder(model, CLIPProcessor.from_pretrained(resolved.path), resolved.weights, resolved.path, device)


# ---------------------------------------------------------------- pairs

def degradation_pairs(out_dir: str | Path, sources: Sequence[Image.Image], prompts: Sequence[str] | None = None,
                      variants: int = 3, levels: int = 5, seed: int = 0, overwrite: bool = False) -> pd.DataFrame:
    """Preference pairs from the kit's own images: clean beats degraded, mild beats severe.

    For every source: ``variants`` damaged copies (random kind, random level), each paired with
    the clean image, and mild-vs-severe pairs of the same kind. Images go to ``out_dir/images``,
    the table to ``out_dir/pairs.csv`` with columns ``prompt,image_0,image_1,label,group,source``
    (``label`` 1 = image 0 preferred; sides are shuffled). Labelled ``synthetic-by-construction``.
    Taught in ``notebooks/05_beyond_scoring.ipynb``.
    """
    out_dir = Path(out_dir)
    csv_path = check_writable(out_dir / "pairs.csv", overwrite)
    rng = np.random.default_rng(seed)
    prompts = list(prompts) if prompts is not None else [f"picture {i}" for i in range(len(sources))]
    if len(prompts) != len(sources):
        raise ValueError(f"{len(sources)} sources but {len(prompts)} prompts; give one prompt per source image")
    rows = []
    for s, (source, prompt) in enumerate(zip(sources, prompts)):
        clean_path = save_image(source.convert("RGB"), out_dir / "images" / f"s{s:03d}_clean.png", overwrite=overwrite)
        damaged = []
        for v in range(variants):
            kind, level = str(rng.choice(DEGRADATIONS)), int(rng.integers(1, levels))
            path = save_image(degrade(source, kind, level, levels, seed=seed + s * 100 + v),
                              out_dir / "images" / f"s{s:03d}_v{v}_{kind}{level}.png", overwrite=overwrite)
            damaged.append((v, kind, level, path))
            rows.append((prompt, clean_path, path, s))
        for v, kind, level, path in damaged:  # mild beats severe: a harder pair (same kind, two strengths)
            if level < levels - 1:
                worse = int(rng.integers(level + 1, levels))
                wpath = save_image(degrade(source, kind, worse, levels, seed=seed + s * 100 + 50 + v),
                                   out_dir / "images" / f"s{s:03d}_v{v}_{kind}{level}_worse{worse}.png", overwrite=overwrite)
                rows.append((prompt, path, wpath, s))
    table = []
    for prompt, better, worse, s in rows:
        flip = bool(rng.random() < 0.5)
        table.append({"prompt": prompt, "image_0": str(worse if flip else better), "image_1": str(better if flip else worse),
                      "label": 0.0 if flip else 1.0, "group": f"s{s:03d}", "source": SYNTHETIC_LABEL})
    frame = pd.DataFrame(table)
    write_text(csv_path, frame.to_csv(index=False), overwrite=overwrite)
    return frame


def read_pickapic_parquet(paths: str | Path | Iterable[str | Path], limit: int | None = None,
                          keep_ties: bool = True) -> tuple[pd.DataFrame, dict[str, bytes]]:
    """Pick-a-Pic parquet file(s) -> (pairs table, ``{image uid: JPEG bytes}``).

    The table has ``prompt,image_0,image_1,label,group,source`` like :func:`degradation_pairs`
    (images are uids, ``group`` is the prompt so splits keep prompts apart). Rows without a
    label, or whose two images are the same, are skipped; ties (0.5) are kept unless
    ``keep_ties=False``. Taught in ``notebooks/05_beyond_scoring.ipynb``.
    """
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    frames = [pd.read_parquet(p) for p in paths]
    raw = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    needed = {"caption", "jpg_0", "jpg_1", "label_0"}
    if missing := needed - set(raw.columns):
        raise ValueError(f"not a Pick-a-Pic parquet: missing columns {sorted(missing)} (has {list(raw.columns)[:12]})")
    if "has_label" in raw.columns:
        raw = raw[raw["has_label"].astype(bool)]
    if "are_different" in raw.columns:
        raw = raw[raw["are_different"].astype(bool)]
    raw = raw[raw["label_0"].notna()]
    if not keep_ties:
        raw = raw[raw["label_0"] != 0.5]
    if limit is not None:
        raw = raw.head(limit)
    images: dict[str, bytes] = {}
    rows = []
    for i, row in enumerate(raw.itertuples(index=False)):
        uids = []
        for side in (0, 1):
            data = bytes(getattr(row, f"jpg_{side}"))
            uid = str(getattr(row, f"image_{side}_uid", "") or hashlib.sha1(data).hexdigest()[:16])
            images[uid] = data
            uids.append(uid)
        rows.append({"prompt": row.caption, "image_0": uids[0], "image_1": uids[1], "label": float(row.label_0),
                     "group": row.caption, "source": "pick-a-pic"})
    return pd.DataFrame(rows), images


def split_pairs(pairs: pd.DataFrame, test_fraction: float = 0.25, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train/held-out split by ``group`` (prompt or source image), so held-out pairs are truly unseen."""
    groups = np.array(sorted(pairs["group"].unique()))
    np.random.default_rng(seed).shuffle(groups)
    n_test = max(1, int(round(test_fraction * len(groups))))
    if n_test >= len(groups):
        raise ValueError(f"only {len(groups)} group(s): cannot hold any out; make more pairs")
    test_groups = set(groups[:n_test])
    held = pairs["group"].isin(test_groups)
    return pairs[~held].reset_index(drop=True), pairs[held].reset_index(drop=True)


# ---------------------------------------------------------------- the embedding cache

@dataclass
class EmbeddingCache:
    """CLIP embeddings by key (image path/uid, prompt text), saved once to an ``.npz`` file."""

    images: dict[str, np.ndarray] = field(default_factory=dict)
    texts: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> "EmbeddingCache":
        with np.load(path, allow_pickle=False) as data:
            return cls(images=dict(zip(data["image_keys"].tolist(), data["image_emb"])),
                       texts=dict(zip(data["text_keys"].tolist(), data["text_emb"])),
                       meta=json.loads(str(data["meta"])))

    def save(self, path: str | Path) -> Path:
        dim = next(iter(self.images.values())).shape[0] if self.images else 0
        with atomic_path(path, overwrite=True) as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, image_keys=np.array(list(self.images), dtype=str),
                         image_emb=np.stack(list(self.images.values())) if self.images else np.zeros((0, dim), np.float32),
                         text_keys=np.array(list(self.texts), dtype=str),
                         text_emb=np.stack(list(self.texts.values())) if self.texts else np.zeros((0, dim), np.float32),
                         meta=np.array(json.dumps(self.meta)))
        return Path(path)


def cache_embeddings(pairs: pd.DataFrame, embedder: ClipEmbedder, cache_file: str | Path,
                     image_source: Mapping[str, bytes] | Callable[[str], Image.Image] | None = None,
                     progress: bool = True) -> EmbeddingCache:
    """Embed every image and prompt of ``pairs`` that ``cache_file`` lacks, once; save; return the cache.

    Images are read from disk by path, from ``{uid: bytes}`` (Pick-a-Pic) or a callable. A
    cache made with another CLIP is not reused (its ``meta`` records the model). A missing or
    unreadable image is reported and its pairs are dropped later by :func:`pair_features`.
    Taught in ``notebooks/05_beyond_scoring.ipynb``.
    """
    cache_file = Path(cache_file)
    meta = {"clip": str(embedder.path), "weights": embedder.weights}
    cache = EmbeddingCache.load(cache_file) if cache_file.exists() else EmbeddingCache(meta=meta)
    if cache.meta.get("clip") != meta["clip"]:
        print(f"cache {cache_file.name} was made with {cache.meta.get('clip')}; starting a new one for {meta['clip']}")
        cache = EmbeddingCache(meta=meta)

    def open_image(key: str) -> Image.Image:
        if callable(image_source):
            return image_source(key)
        if image_source is not None:
            return Image.open(io.BytesIO(image_source[key]))
        return Image.open(key)

    keys = [k for k in dict.fromkeys(pd.concat([pairs["image_0"], pairs["image_1"]]).astype(str)) if k not in cache.images]
    prompts = [p for p in dict.fromkeys(pairs["prompt"].astype(str)) if p not in cache.texts]
    bad = []
    for start in tqdm(range(0, len(keys), 64), desc="caching CLIP image embeddings", disable=not progress or not keys):
        batch, names = [], []
        for key in keys[start:start + 64]:
            try:
                image = open_image(key)
                image.load()
                batch.append(image.convert("RGB"))
                names.append(key)
            except Exception as exc:  # noqa: BLE001 - a bad image is reported and skipped, never fatal
                bad.append(f"{key}: {type(exc).__name__}: {exc}")
        for key, vector in zip(names, embedder.embed_images(batch)):
            cache.images[key] = vector.astype(np.float32)
    for key, vector in zip(prompts, embedder.embed_texts(prompts)):
        cache.texts[key] = vector.astype(np.float32)
    if bad:
        print(f"cache_embeddings: skipped {len(bad)} unreadable image(s): " + "; ".join(bad[:5]))
    if keys or prompts or not cache_file.exists():
        cache.save(cache_file)
    print(f"embeddings: {len(keys)} new images, {len(prompts)} new prompts embedded; "
          f"{len(cache.images)} images, {len(cache.texts)} prompts cached in {cache_file}")
    return cache


def pair_features(pairs: pd.DataFrame, cache: EmbeddingCache) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tensors ``(image_0, image_1, text, label)`` for the pairs whose embeddings are all cached."""
    ok = pairs["image_0"].astype(str).isin(cache.images) & pairs["image_1"].astype(str).isin(cache.images) \
        & pairs["prompt"].astype(str).isin(cache.texts)
    if (~ok).any():
        print(f"pair_features: dropped {int((~ok).sum())} pair(s) with an image or prompt missing from the cache")
    pairs = pairs[ok]
    stack = lambda keys, table: torch.from_numpy(np.stack([table[str(k)] for k in keys])) if len(keys) else torch.zeros(0)  # noqa: E731
    return (stack(pairs["image_0"], cache.images), stack(pairs["image_1"], cache.images),
            stack(pairs["prompt"], cache.texts), torch.tensor(pairs["label"].to_numpy(np.float32)))


# ---------------------------------------------------------------- the reward model

class RewardMLP(nn.Module):
    """Reward of (image embedding, prompt embedding): an MLP on ``[image, text, image*text]``."""

    def __init__(self, dim: int, hidden: int = 64, dropout: float = 0.3):
        super().__init__()
        self.dim, self.hidden = dim, hidden
        # Embeddings share a large common direction; standardising them (statistics of the
        # training images, saved with the model) lets small differences such as damage show.
        self.register_buffer("image_mean", torch.zeros(dim))
        self.register_buffer("image_std", torch.ones(dim))
        self.net = nn.Sequential(nn.Linear(3 * dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, hidden // 2), nn.GELU(), nn.Linear(hidden // 2, 1))

    def fit_standardiser(self, images: torch.Tensor) -> None:
        """Set the image standardisation from the training embeddings."""
        self.image_mean.copy_(images.mean(0))
        self.image_std.copy_(images.std(0).clamp_min(1e-6))

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        image = (image - self.image_mean) / self.image_std
        return self.net(torch.cat([image, text, image * text], dim=-1)).squeeze(-1)


def pairwise_loss(r0: torch.Tensor, r1: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry loss: ``P(image 0 preferred) = sigmoid(r0 - r1)`` against the label (ties = 0.5)."""
    return nn.functional.binary_cross_entropy_with_logits(r0 - r1, label)


@torch.inference_mode()
def pair_accuracy(model: RewardMLP, features: tuple[torch.Tensor, ...]) -> float:
    """Share of non-tie pairs where the preferred image gets the higher reward."""
    image0, image1, text, label = features
    keep = label != 0.5
    if not keep.any():
        return float("nan")
    model.eval()
    r0, r1 = model(image0[keep], text[keep]), model(image1[keep], text[keep])
    return float(((r0 > r1) == (label[keep] > 0.5)).float().mean())


def train_reward(train: tuple[torch.Tensor, ...], held_out: tuple[torch.Tensor, ...] | None = None, epochs: int = 60,
                 lr: float = 3e-3, weight_decay: float = 1e-2, hidden: int = 64, dropout: float = 0.3, batch_size: int = 256,
                 seed: int = 0, progress: bool = True) -> tuple[RewardMLP, pd.DataFrame]:
    """Train a :class:`RewardMLP` with :func:`pairwise_loss`; returns it and a history table.

    The history has one row per epoch: ``epoch, loss, train_acc, held_out_acc``. Each side of
    every pair is also seen swapped, so the reward cannot learn "image 0 wins".
    Taught in ``notebooks/05_beyond_scoring.ipynb``.
    """
    torch.manual_seed(seed)
    image0, image1, text, label = train
    if len(label) == 0:
        raise ValueError("no training pairs; make or load some pairs first")
    image0, image1 = torch.cat([image0, image1]), torch.cat([image1, image0])
    text, label = torch.cat([text, text]), torch.cat([label, 1 - label])
    model = RewardMLP(image0.shape[1], hidden, dropout)
    model.fit_standardiser(image0)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    history = []
    bar = tqdm(range(epochs), desc="training reward", disable=not progress)
    for epoch in bar:
        model.train()
        order = torch.randperm(len(label))
        total = 0.0
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            loss = pairwise_loss(model(image0[idx], text[idx]), model(image1[idx], text[idx]), label[idx])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(idx)
        row = {"epoch": epoch + 1, "loss": total / len(order), "train_acc": pair_accuracy(model, train),
               "held_out_acc": pair_accuracy(model, held_out) if held_out is not None else float("nan")}
        history.append(row)
        bar.set_postfix(loss=f"{row['loss']:.3f}", held_out=f"{row['held_out_acc']:.2f}")
    return model.eval(), pd.DataFrame(history)


def save_reward(model: RewardMLP, path: str | Path, embedder: ClipEmbedder, prompt: str = "", extra: dict | None = None,
                overwrite: bool = False) -> Path:
    """Save the reward MLP with what it needs to be used again (CLIP path, weights, default prompt)."""
    payload = {"state_dict": model.state_dict(), "dim": model.dim, "hidden": model.hidden, "clip": str(embedder.path),
               "weights": embedder.weights, "prompt": prompt, **(extra or {})}
    with atomic_path(path, overwrite) as tmp:
        torch.save(payload, tmp)
    return Path(path)


class RewardScorer:
    """The learned reward behind the kit's scorer interface (a prompt can be set; default empty)."""

    def __init__(self, model: RewardMLP, embedder: ClipEmbedder, prompt: str = "", weights: str | None = None):
        self.name = "preference-reward"
        self.model, self.embedder, self.prompt = model.eval(), embedder, prompt
        # Offline CLIP means offline results, whatever the MLP learned.
        self.weights = weights or embedder.weights

    @torch.inference_mode()
    def score_images(self, images: Sequence[Image.Image], prompt: str | None = None) -> list[float]:
        """One reward per image (higher = preferred); comparable within one prompt, not an absolute scale."""
        if not images:
            return []
        image = torch.from_numpy(self.embedder.embed_images(list(images)))
        text = torch.from_numpy(self.embedder.embed_texts([self.prompt if prompt is None else prompt])).expand(len(image), -1)
        return [float(v) for v in self.model(image, text)]


def load_reward_scorer(path: str | Path, device: str | None = None, embedder: ClipEmbedder | None = None) -> RewardScorer:
    """Load a reward saved by :func:`save_reward` (and its CLIP) as a :class:`RewardScorer`."""
    payload = torch.load(path, map_location="cpu", weights_only=False)
    model = RewardMLP(payload["dim"], payload["hidden"])
    model.load_state_dict(payload["state_dict"])
    if embedder is None:
        from transformers import CLIPModel, CLIPProcessor

        device = pick_device(device)
        clip = Path(payload["clip"])
        if not clip.is_dir():
            raise FileNotFoundError(f"the reward was trained on CLIP at {clip}, which is gone; resolve it again "
                                    "with load_clip_embedder() and pass embedder=")
        embedder = ClipEmbedder(CLIPModel.from_pretrained(clip).to(device).eval(), CLIPProcessor.from_pretrained(clip),
                                payload["weights"], clip, device)
    return RewardScorer(model, embedder, payload.get("prompt", ""), payload["weights"])
