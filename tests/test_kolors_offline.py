"""The Kolors spine on the offline set: DiffSynth recognises every file and draws an image."""

import numpy as np
import pytest

from helpers.kolors import load_pipeline
from helpers.models import resolve_models


@pytest.mark.heavy
def test_offline_kolors_files_load_in_diffsynth_and_draw():
    models = resolve_models(("text_encoder", "unet", "vae"))
    pipe = load_pipeline(models, device="cpu")
    assert pipe.text_encoder_kolors is not None and pipe.unet.is_kolors
    image = pipe(prompt="古风，水墨画，一个黑色长发少女", negative_prompt="丑陋", cfg_scale=4,
                 num_inference_steps=2, height=64, width=64, seed=0)
    pixels = np.asarray(image, dtype=np.float32)
    assert image.size == (64, 64)
    assert np.isfinite(pixels).all() and pixels.std() > 1.0, "offline panel is NaN or a constant image"
