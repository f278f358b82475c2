"""The offline set: randomly initialised models with the real ones' classes and files.

Our machines and CI reach no model hub, so every code path that loads real weights
also runs on these: the same classes, the same folder layout and file formats, read
by the same loaders (DiffSynth's ``ModelManager``, ``from_pretrained``). They are
random, so what they draw and score means nothing; they exist so that every cell of
the course runs anywhere. Everything made from them is labelled ``offline-random``.

What is full size and what is cut down:

- Kolors UNet: full size (2.6 B parameters). DiffSynth recognises a UNet file by a
  hash of its key names *and shapes*, so a smaller one would not load.
- Kolors text encoder (ChatGLM): one transformer layer instead of 28; the hidden
  size stays 4096 because the UNet's text projection expects it.
- VAEs: full size (they are small).
- Aesthetic predictor: the real head on a small CLIP vision tower (``clip="small"``)
  for tests, or the full ViT-L/14 tower (``clip="full"``) for benchmarks.

Taught in ``notebooks/00_setup.ipynb``.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

BUILDER_VERSION = 1
MARKER = "OFFLINE_RANDOM_WEIGHTS.json"

# Kolors' text encoder is ChatGLM3-6B; these are its published config values.
KOLORS_CHATGLM_CONFIG = dict(
    architectures=["ChatGLMModel"],
    model_type="chatglm",
    add_bias_linear=False,
    add_qkv_bias=True,
    apply_query_key_layer_scaling=True,
    apply_residual_connection_post_layernorm=False,
    attention_dropout=0.0,
    attention_softmax_in_fp32=True,
    bias_dropout_fusion=True,
    ffn_hidden_size=13696,
    fp32_residual_connection=False,
    hidden_dropout=0.0,
    hidden_size=4096,
    kv_channels=128,
    layernorm_epsilon=1e-05,
    multi_query_attention=True,
    multi_query_group_num=2,
    num_attention_heads=32,
    num_layers=28,
    original_rope=True,
    padded_vocab_size=65024,
    post_layer_norm=True,
    rmsnorm=True,
    seq_length=32768,
    use_cache=True,  # transformers 4.57 reads it; without it: AttributeError use_cache
    tie_word_embeddings=False,
    eos_token_id=2,
    pad_token_id=0,
)

# diffusers' description of the Kolors UNet (an SDXL UNet fed by a 4096-wide text encoder).
KOLORS_UNET_CONFIG = dict(
    act_fn="silu",
    addition_embed_type="text_time",
    addition_embed_type_num_heads=64,
    addition_time_embed_dim=256,
    attention_head_dim=[5, 10, 20],
    block_out_channels=[320, 640, 1280],
    center_input_sample=False,
    cross_attention_dim=2048,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    encoder_hid_dim=4096,
    encoder_hid_dim_type="text_proj",
    flip_sin_to_cos=True,
    freq_shift=0,
    in_channels=4,
    layers_per_block=2,
    mid_block_type="UNetMidBlock2DCrossAttn",
    norm_eps=1e-05,
    norm_num_groups=32,
    out_channels=4,
    projection_class_embeddings_input_dim=5632,
    sample_size=128,
    transformer_layers_per_block=[1, 2, 10],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    upcast_attention=False,
    use_linear_projection=True,
)

SDXL_VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512],
    layers_per_block=2,
    act_fn="silu",
    latent_channels=4,
    norm_num_groups=32,
    sample_size=1024,
    scaling_factor=0.13025,
    force_upcast=False,
)

# CLIP ViT-L/14, the tower under the competition's aesthetic predictor.
CLIP_VIT_L14 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                    num_attention_heads=16, patch_size=14, image_size=224, projection_dim=768)
# Same interface, a few MB: the head still sees a 768-d embedding.
CLIP_SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, patch_size=32, image_size=224, projection_dim=768)


def _fresh_dir(final: Path) -> Path:
    """A clean temporary folder beside ``final``; moved into place when a build succeeds."""
    tmp = final.with_name(final.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _finish(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final) if final.is_dir() else final.unlink()
    tmp.rename(final)


def build_text_encoder(folder: Path, seed: int = 0, num_layers: int = 1) -> None:
    """A ChatGLM text encoder folder (``config.json`` + ``pytorch_model.bin``), like Kolors' own."""
    from diffsynth.models.kolors_text_encoder import ChatGLMConfig, ChatGLMModel, RMSNorm

    config = ChatGLMConfig(**{**KOLORS_CHATGLM_CONFIG, "num_layers": num_layers, "torch_dtype": "float16"})
    torch.manual_seed(seed)
    # empty_init=True (the default) skips initialisation: uninitialised memory, black images.
    model = ChatGLMModel(config, empty_init=False)
    for module in model.modules():
        if isinstance(module, RMSNorm):  # created with torch.empty; real checkpoints overwrite it
            torch.nn.init.ones_(module.weight)
    model = model.to(torch.float16)
    tmp = _fresh_dir(folder)
    model.save_pretrained(tmp, safe_serialization=False)  # Kolors ships .bin shards, so do we
    _finish(tmp, folder)


def build_unet(file: Path, seed: int = 0) -> None:
    """A full-size Kolors UNet as ``diffusion_pytorch_model.safetensors`` (fp16) + ``config.json``."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**KOLORS_UNET_CONFIG).to(torch.float16)
    tmp = _fresh_dir(file.parent)
    unet.save_pretrained(tmp, safe_serialization=True)
    del unet
    _finish(tmp, file.parent)


def build_vae(file: Path, seed: int = 0) -> None:
    """An SDXL-architecture VAE as ``diffusion_pytorch_model.safetensors`` + ``config.json``."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(**SDXL_VAE_CONFIG)
    tmp = _fresh_dir(file.parent)
    vae.save_pretrained(tmp, safe_serialization=True)
    _finish(tmp, file.parent)


def build_aesthetic_predictor(folder: Path, seed: int = 0, clip: str = "small") -> None:
    """The competition's predictor class on a random CLIP tower, with a real ``CLIPProcessor``.

    The processor is the real ViT-L/14 preprocessing (224 px, CLIP mean/std) plus the CLIP
    tokenizer files DiffSynth ships, so ``CLIPProcessor.from_pretrained`` works offline.
    """
    import diffsynth
    from aesthetics_predictor import AestheticsPredictorV2Linear
    from transformers import CLIPImageProcessor, CLIPProcessor, CLIPTokenizer, CLIPVisionConfig

    sizes = {"small": CLIP_SMALL, "full": CLIP_VIT_L14}[clip]
    torch.manual_seed(seed)
    model = AestheticsPredictorV2Linear(CLIPVisionConfig(**sizes)).eval()
    image_processor = CLIPImageProcessor(
        do_resize=True, size={"shortest_edge": 224}, do_center_crop=True, crop_size={"height": 224, "width": 224},
        do_normalize=True, image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
        do_convert_rgb=True, resample=3,
    )
    tokenizer_dir = Path(diffsynth.__file__).parent / "tokenizer_configs" / "stable_diffusion" / "tokenizer"
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=CLIPTokenizer.from_pretrained(tokenizer_dir))
    tmp = _fresh_dir(folder)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    _finish(tmp, folder)


def builders(clip: str = "small") -> dict[str, Callable[[Path, int], None]]:
    """Builder per model key (the keys of ``helpers.models.SPECS``)."""
    return {
        "text_encoder": build_text_encoder,
        "unet": build_unet,
        "vae": build_vae,
        "fp16_vae": build_vae,
        "aesthetic": lambda path, seed: build_aesthetic_predictor(path, seed, clip=clip),
    }


def marker_path(path: Path) -> Path:
    """Where the 'this is offline random' marker of a built model lives."""
    return (path if path.suffix == "" else path.parent) / MARKER


def is_built(path: Path) -> bool:
    """True when ``path`` was completely built by this builder version."""
    marker = marker_path(path)
    if not (marker.exists() and path.exists()):
        return False
    try:
        return json.loads(marker.read_text()).get("builder_version") == BUILDER_VERSION
    except (OSError, ValueError):
        return False


def build(key: str, path: Path, seed: int = 0, clip: str = "small") -> float:
    """Build one offline model at ``path`` and mark it; returns seconds taken."""
    start = time.perf_counter()
    builders(clip)[key](path, seed)
    marker = marker_path(path)
    marker.write_text(json.dumps({
        "weights": "offline-random", "model": key, "seed": seed, "clip": clip if key == "aesthetic" else None,
        "builder_version": BUILDER_VERSION, "torch": torch.__version__,
        "note": "Randomly initialised. Outputs made with these weights mean nothing.",
    }, indent=2))
    return time.perf_counter() - start


@contextmanager
def build_lock(folder: Path):
    """Hold an exclusive lock on ``folder`` so two processes never build into it at once."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".build.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_missing(paths: dict[str, Path], seed: int = 0, clip: str = "small",
                  lock_dir: Path | None = None) -> dict[str, float]:
    """Build every model in ``paths`` that is not built yet, with a progress bar; cached after.

    Safe to call from several processes at once: builds are serialised by a lock file in
    ``lock_dir`` (default: the folder above the models), and a model another process
    finished meanwhile is not built again.
    """
    seconds: dict[str, float] = {}
    if all(is_built(path) for path in paths.values()):
        return seconds
    lock_dir = lock_dir or Path(os.path.commonpath([str(p) for p in paths.values()])).parent
    with build_lock(lock_dir):
        todo = {key: path for key, path in paths.items() if not is_built(path)}
        with tqdm(total=len(todo), desc="building offline random models", unit="model", disable=not todo) as bar:
            for key, path in todo.items():
                bar.set_postfix_str(key)
                seconds[key] = build(key, path, seed=seed, clip=clip)
                bar.update()
    return seconds
