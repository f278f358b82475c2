"""A VLM level scorer (Q-Align style) on Qwen2-VL through transformers.

Instead of asking a chat model for a number and parsing its text, ask it to *rate* the image
with one of a few level words, and read the model's belief directly: at the answer position
take the logits of the level tokens only (``bad``, ``poor``, ``fair``, ``good``,
``excellent``), softmax them into a distribution, and score = the expectation of the level
values (1..5). The distribution says how sure the model is; two images with the same score
can have very different spreads. (Seed 004 does the same with levels 1..10 on Qwen2-VL-7B.)

Real weights: ``models/Qwen2-VL-2B-Instruct`` (ModelScope ``Qwen/Qwen2-VL-2B-Instruct``;
7B works the same). Offline: a **tiny random** ``Qwen2VLForConditionalGeneration`` (the same
class, one layer, 64 wide) with a small byte-level BPE tokenizer trained here on the
prompt's own words and the chat template the processor needs. It runs the whole path: chat
template, image tokens, vision tower, logits at the answer position. Its distributions mean
nothing and are labelled ``offline-random``.

Taught in ``notebooks/05_beyond_scoring.ipynb``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from tqdm.auto import tqdm

from .extra_models import ExtraSpec, Resolved, pick_device, resolve_extra

LEVELS = ("bad", "poor", "fair", "good", "excellent")
LEVEL_VALUES = (1.0, 2.0, 3.0, 4.0, 5.0)
PROMPT = "How would you rate the aesthetics of this image? Answer with one word: bad, poor, fair, good or excellent."
ANSWER_PREFIX = "The aesthetics of this image is"
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]
# The chat layout Qwen2-VL uses (role blocks, the image as vision_start/image_pad/vision_end),
# written out small for the offline processor; the real processor ships its own template.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TINY_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                 max_position_embeddings=4096, rope_scaling={"type": "mrope", "mrope_section": [4, 2, 2]})
TINY_VISION = dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14, spatial_merge_size=2,
                   temporal_patch_size=2, in_channels=3)
TINY_PIXELS = dict(min_pixels=56 * 56, max_pixels=224 * 224)


def _complete(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors")) and (path / "tokenizer_config.json").is_file()


def _tiny_tokenizer(folder: Path):
    """A small byte-level BPE in Qwen2's format, trained on the scorer's own words (no download)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import Qwen2TokenizerFast

    corpus = [PROMPT, ANSWER_PREFIX, "You are a helpful assistant.", "system user assistant",
              *(f"{ANSWER_PREFIX} {level}." for level in LEVELS)] * 50
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=400, min_frequency=2, show_progress=False)
    raw = folder / "bpe"
    raw.mkdir(parents=True, exist_ok=True)
    bpe.save_model(str(raw))
    tokenizer = Qwen2TokenizerFast(vocab_file=str(raw / "vocab.json"), merges_file=str(raw / "merges.txt"),
                                   unk_token=None, bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS})
    return tokenizer


def _build_offline(folder: Path, seed: int) -> None:
    import shutil

    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor, Qwen2VLProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    tokenizer = _tiny_tokenizer(folder)
    shutil.rmtree(folder / "bpe")
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in SPECIAL_TOKENS}
    torch.manual_seed(seed)
    config = Qwen2VLConfig(text_config={**TINY_TEXT, "vocab_size": len(tokenizer)}, vision_config=TINY_VISION,
                           image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                           vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
                           eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    Qwen2VLForConditionalGeneration(config).save_pretrained(folder)
    image_processor = Qwen2VLImageProcessor(**TINY_PIXELS)
    Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor(),
                     chat_template=CHAT_TEMPLATE).save_pretrained(folder)


def _download(folder: Path) -> None:
    from modelscope import snapshot_download

    snapshot_download("Qwen/Qwen2-VL-2B-Instruct", local_dir=str(folder))


SPEC = ExtraSpec("qwen2_vl", "Qwen2-VL-2B-Instruct (chat VLM) for level scoring", "Qwen/Qwen2-VL-2B-Instruct (ModelScope)",
                 "Qwen2-VL-2B-Instruct", _complete, _build_offline, _download)


def level_token_ids(tokenizer, levels: Sequence[str] = LEVELS) -> list[int]:
    """The token id of each level word as it follows the answer prefix (with its leading space).

    Raises ``ValueError`` when a level is not a single token: its logit would then not be
    one number at one position. Pick other level words (or digits 1-9) in that case.
    """
    ids = []
    for level in levels:
        pieces = tokenizer.encode(" " + level, add_special_tokens=False)
        if len(pieces) != 1:
            raise ValueError(f"level {level!r} is {len(pieces)} tokens for this tokenizer ({pieces}); "
                             "choose level words that are one token each")
        ids.append(pieces[0])
    return ids


class VLMLevelScorer:
    """Q-Align style level scoring with the kit's scorer interface, plus the level distribution."""

    def __init__(self, model, processor, weights: str, device: str = "cpu", levels: Sequence[str] = LEVELS,
                 values: Sequence[float] = LEVEL_VALUES, prompt: str = PROMPT, answer_prefix: str = ANSWER_PREFIX,
                 batch_size: int = 4):
        if len(levels) != len(values):
            raise ValueError(f"{len(levels)} levels but {len(values)} values")
        self.name = "vlm-levels"
        self.weights = weights
        self.model, self.processor, self.device = model, processor, device
        self.levels, self.values = list(levels), torch.tensor(values, dtype=torch.float32)
        self.prompt, self.answer_prefix, self.batch_size = prompt, answer_prefix, batch_size
        self.processor.tokenizer.padding_side = "left"  # so the last position is the answer position in every row
        self.level_ids = level_token_ids(self.processor.tokenizer, self.levels)

    def chat_text(self) -> str:
        """The exact text the model reads: chat template + generation prompt + the answer's first words."""
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.prompt}]}]
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + self.answer_prefix

    @torch.inference_mode()
    def level_probabilities(self, images: Sequence[Image.Image], progress: bool = False) -> torch.Tensor:
        """``(len(images), len(levels))`` probabilities: softmax over the level tokens' logits at the answer position."""
        text = self.chat_text()
        out = []
        for start in tqdm(range(0, len(images), self.batch_size), desc="VLM levels", disable=not progress):
            batch = [im.convert("RGB") for im in images[start:start + self.batch_size]]
            inputs = self.processor(text=[text] * len(batch), images=batch, return_tensors="pt", padding=True).to(self.device)
            logits = self.model(**inputs).logits[:, -1, :]  # next-token logits after the answer prefix
            out.append(torch.softmax(logits[:, self.level_ids].float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, len(self.levels))

    def score_with_distribution(self, images: Sequence[Image.Image]) -> list[tuple[float, dict[str, float]]]:
        """``(expected level, {level: probability})`` per image."""
        probs = self.level_probabilities(images)
        scores = probs @ self.values
        return [(float(s), {lv: float(p) for lv, p in zip(self.levels, row)}) for s, row in zip(scores, probs)]

    def score_images(self, images: Sequence[Image.Image]) -> list[float]:
        """Expected level per image (1 = bad .. 5 = excellent)."""
        return [score for score, _ in self.score_with_distribution(images)]


def load_vlm_scorer(device: str | None = None, mode: str | None = None, resolved: Resolved | None = None,
                    min_pixels: int | None = None, max_pixels: int | None = None, **kwargs) -> VLMLevelScorer:
    """Resolve and load Qwen2-VL (real 2B-Instruct or the tiny offline one) as a :class:`VLMLevelScorer`.

    ``min_pixels``/``max_pixels`` bound the image tokens (fewer = faster, coarser); the
    processor's own defaults otherwise. Taught in ``notebooks/05_beyond_scoring.ipynb``.
    """
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    resolved = resolved or resolve_extra(SPEC, mode)
    device = pick_device(device)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    pixels = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None}
    processor = AutoProcessor.from_pretrained(resolved.path, **pixels)
    model = Qwen2VLForConditionalGeneration.from_pretrained(resolved.path, dtype=dtype).to(device).eval()
    return VLMLevelScorer(model, processor, resolved.weights, device, **kwargs)
