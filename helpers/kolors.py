"""Loading the Kolors pipeline the way DiffSynth does, on whatever weights were resolved.

The lesson is the two DiffSynth calls (``ModelManager`` then
``SDXLImagePipeline.from_model_manager``); this module only picks a device and a
precision that work on the machine at hand. Taught in ``notebooks/04_comic_strip.ipynb``.
"""

from __future__ import annotations

import torch

from .models import ResolvedModels


def pick_device(device: str | None = None) -> str:
    """``cuda`` when a GPU is visible, else ``cpu`` (or what the caller asked for)."""
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(device: str, dtype: str | torch.dtype | None = None) -> torch.dtype:
    """fp16 on GPU (as the baseline), bf16 on CPU (fp16 matmuls are slow or missing there)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype:
        return {"fp16": torch.float16, "float16": torch.float16, "bf16": torch.bfloat16,
                "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32}[dtype]
    return torch.float16 if device.startswith("cuda") else torch.bfloat16


def load_pipeline(models: ResolvedModels, device: str | None = None, dtype: str | torch.dtype | None = None,
                  vae: str = "vae"):
    """Build DiffSynth's Kolors ``SDXLImagePipeline`` from resolved model files.

    Equivalent to the baseline's::

        model_manager = ModelManager(torch_dtype=..., device=..., file_path_list=[text_encoder, unet, vae])
        pipe = SDXLImagePipeline.from_model_manager(model_manager)
    """
    from diffsynth import ModelManager, SDXLImagePipeline

    device = pick_device(device)
    torch_dtype = pick_dtype(device, dtype)
    manager = ModelManager(torch_dtype=torch_dtype, device=device, file_path_list=models.kolors_files(vae=vae))
    loaded = set(manager.model_name)
    expected = {"kolors_text_encoder", "sdxl_unet", "sdxl_vae_decoder", "sdxl_vae_encoder"}
    if not expected <= loaded:
        raise RuntimeError(
            f"DiffSynth did not recognise every Kolors file (loaded {sorted(loaded)}, expected {sorted(expected)}). "
            f"Check the files under {models.root}; a partial download is the usual cause.")
    return SDXLImagePipeline.from_model_manager(manager)
