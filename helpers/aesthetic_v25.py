"""Aesthetic Predictor V2.5: a SigLIP tower and an MLP head, through the package's own classes.

The ``aesthetic-predictor-v2-5`` package (discus0434) scores 1-10 like the competition's
LAION V2 predictor, but on SigLIP (so400m, 384 px) and trained on more illustration-like
images. Its loader ``convert_v2_5_from_siglip(head_path, encoder_path)`` builds an
``AestheticPredictorV2_5Model`` (a ``SiglipVisionModel`` subclass) from a SigLIP folder and
loads the head from a ``.pth`` file; this module hands it local paths so it never reaches
for the network by itself.

Real weights live in ``models/aesthetic-predictor-v2-5/``: ``siglip-so400m-patch14-384/``
(a Hugging Face folder) and ``aesthetic_predictor_v2_5.pth`` (the head). Offline, the same
classes on a *small randomly initialised* SigLIP, loudly labelled ``offline-random``.

Taught in ``notebooks/05_beyond_scoring.ipynb``.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from .extra_models import ExtraSpec, Resolved, pick_device, resolve_extra

ENCODER_DIR = "siglip-so400m-patch14-384"
HEAD_FILE = "aesthetic_predictor_v2_5.pth"
# Same interface as SigLIP so400m (patch 14), a few MB.
SIGLIP_SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    patch_size=14, image_size=224)


def _complete(path: Path) -> bool:
    return (path / ENCODER_DIR / "config.json").is_file() and (path / HEAD_FILE).is_file()


def _build_offline(folder: Path, seed: int) -> None:
    from aesthetic_predictor_v2_5 import AestheticPredictorV2_5Head, AestheticPredictorV2_5Processor
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(seed)
    config = SiglipVisionConfig(**SIGLIP_SMALL)
    SiglipVisionModel(config).save_pretrained(folder / ENCODER_DIR)
    size = SIGLIP_SMALL["image_size"]
    AestheticPredictorV2_5Processor(size={"height": size, "width": size}, do_normalize=True, image_mean=[0.5] * 3,
                                    image_std=[0.5] * 3, resample=3).save_pretrained(folder / ENCODER_DIR)
    head = AestheticPredictorV2_5Head(config)
    torch.save(OrderedDict(head.state_dict()), folder / HEAD_FILE)


def _download(folder: Path) -> None:
    from modelscope import snapshot_download

    from aesthetic_predictor_v2_5.siglip_v2_5 import URL

    snapshot_download("AI-ModelScope/siglip-so400m-patch14-384", local_dir=str(folder / ENCODER_DIR))
    torch.hub.download_url_to_file(URL, str(folder / HEAD_FILE))


SPEC = ExtraSpec("aesthetic_v25", "Aesthetic Predictor V2.5 (SigLIP so400m + MLP head)",
                 "SigLIP so400m-patch14-384 + aesthetic_predictor_v2_5.pth (github.com/discus0434/aesthetic-predictor-v2-5)",
                 "aesthetic-predictor-v2-5", _complete, _build_offline, _download)


class AestheticV25Scorer:
    """V2.5 scores (roughly 1-10, higher is better) with the kit's scorer interface.

    ``.name``, ``.weights`` ("real" / "offline-random"), ``.score_images(images) -> list[float]``.
    """

    def __init__(self, model, processor, weights: str, device: str = "cpu", batch_size: int = 8,
                 dtype: torch.dtype = torch.float32):
        self.name = "aesthetic-v2.5"
        self.weights = weights
        self.model, self.processor = model, processor
        self.device, self.batch_size, self.dtype = device, batch_size, dtype

    @torch.inference_mode()
    def score_images(self, images: Sequence[Image.Image]) -> list[float]:
        """One score per image, in order; images are converted to RGB first."""
        scores: list[float] = []
        for start in range(0, len(images), self.batch_size):
            batch = [im.convert("RGB") for im in images[start:start + self.batch_size]]
            pixels = self.processor(images=batch, return_tensors="pt").pixel_values
            logits = self.model(pixel_values=pixels.to(self.device, self.dtype)).logits
            scores += [float(v) for v in logits.float().squeeze(-1).cpu()]
        return scores


def load_v25_scorer(device: str | None = None, mode: str | None = None, batch_size: int = 8,
                    resolved: Resolved | None = None) -> AestheticV25Scorer:
    """Resolve and load Aesthetic Predictor V2.5 with ``convert_v2_5_from_siglip`` (real or offline-random).

    Taught in ``notebooks/05_beyond_scoring.ipynb``.
    """
    from aesthetic_predictor_v2_5 import convert_v2_5_from_siglip

    resolved = resolved or resolve_extra(SPEC, mode)
    device = pick_device(device)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model, processor = convert_v2_5_from_siglip(
        predictor_name_or_path=str(resolved.path / HEAD_FILE),
        encoder_model_name=str(resolved.path / ENCODER_DIR),
    )
    model = model.to(device, dtype).eval()
    return AestheticV25Scorer(model, processor, resolved.weights, device, batch_size, dtype)
