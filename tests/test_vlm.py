"""The VLM level scorer on a tiny random Qwen2-VL (same class as the real one), and its place in the service."""

import io

import httpx
import pytest
import torch
from transformers import Qwen2VLForConditionalGeneration

from helpers.agreement import procedural_images
from helpers.service import background_server, create_app
from helpers.vlm import ANSWER_PREFIX, LEVELS, level_token_ids, load_vlm_scorer


@pytest.fixture(scope="module")
def vlm():
    return load_vlm_scorer(device="cpu")


def test_it_is_the_real_class_with_offline_weights(vlm):
    assert isinstance(vlm.model, Qwen2VLForConditionalGeneration)
    assert vlm.weights == "offline-random" and vlm.name == "vlm-levels"


def test_prompt_puts_the_image_in_the_chat_and_ends_at_the_answer(vlm):
    text = vlm.chat_text()
    assert "<|image_pad|>" in text and text.endswith(ANSWER_PREFIX)
    assert text.index("<|im_start|>user") < text.index("<|image_pad|>") < text.index("<|im_start|>assistant")


def test_levels_must_be_single_tokens(vlm):
    assert len(set(level_token_ids(vlm.processor.tokenizer))) == len(LEVELS)
    with pytest.raises(ValueError, match="one token"):
        level_token_ids(vlm.processor.tokenizer, ["bad", "magnificently-unknown-word"])


def test_distribution_is_a_softmax_over_levels_and_score_its_expectation(vlm):
    images = procedural_images(3, 160, seed=4) + [procedural_images(1, 96)[0].resize((240, 100))]
    results = vlm.score_with_distribution(images)
    for score, dist in results:
        assert list(dist) == list(LEVELS)
        assert sum(dist.values()) == pytest.approx(1.0, abs=1e-5)
        assert score == pytest.approx(sum(p * v for p, v in zip(dist.values(), [1, 2, 3, 4, 5])), abs=1e-5)
        assert 1.0 <= score <= 5.0
    # Left padding keeps the answer position last: batching must not change a result.
    single = vlm.score_with_distribution([images[3]])[0]
    assert single[0] == pytest.approx(results[3][0], abs=1e-4)
    assert vlm.score_images(images[:1]) == pytest.approx([results[0][0]], abs=1e-4)
    # The probabilities come from the model's logits at the answer position (not a constant).
    logits = torch.tensor([d["good"] for _, d in results])
    assert torch.isfinite(logits).all() and len({round(s, 6) for s, _ in results}) > 1


def test_service_returns_the_level_distribution(vlm):
    buffer = io.BytesIO()
    procedural_images(1, 128, seed=8)[0].save(buffer, format="JPEG")
    with background_server(create_app([vlm])) as url:
        body = httpx.post(url + "/score", files={"file": ("p.jpg", buffer.getvalue(), "image/jpeg")}).json()
    assert set(body["distributions"]["vlm-levels"]) == set(LEVELS)
    assert 1.0 <= body["scores"]["vlm-levels"] <= 5.0 and body["weights"]["vlm-levels"] == "offline-random"
