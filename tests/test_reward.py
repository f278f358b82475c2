"""The preference reward: pairs, the CLIP embedding cache, pairwise training, Pick-a-Pic parquet, save/load."""

import io

import numpy as np
import pandas as pd
import pytest
import torch

from helpers.agreement import procedural_images
from helpers.reward import (EmbeddingCache, RewardScorer, cache_embeddings, degradation_pairs, load_clip_embedder,
                            load_reward_scorer, pair_accuracy, pair_features, pairwise_loss, read_pickapic_parquet,
                            save_reward, split_pairs, train_reward)


@pytest.fixture(scope="module")
def embedder():
    return load_clip_embedder(device="cpu")


@pytest.fixture(scope="module")
def offline_pairs(tmp_path_factory):
    out = tmp_path_factory.mktemp("pairs")
    return degradation_pairs(out, procedural_images(32, 96, seed=5), variants=3, seed=0)


def test_degradation_pairs_shuffle_sides_and_are_labelled(offline_pairs):
    assert set(offline_pairs["label"]) == {0.0, 1.0}  # the preferred image is not always image 0
    assert set(offline_pairs["source"]) == {"synthetic-by-construction"}
    assert offline_pairs["group"].nunique() == 32
    clean_side = np.where(offline_pairs["label"] == 1.0, offline_pairs["image_0"], offline_pairs["image_1"])
    assert any("clean" in p for p in clean_side) and not any(
        "clean" in p for p in np.where(offline_pairs["label"] == 1.0, offline_pairs["image_1"], offline_pairs["image_0"]))


def test_split_keeps_groups_apart(offline_pairs):
    train, held = split_pairs(offline_pairs, 0.25, seed=1)
    assert not set(train["group"]) & set(held["group"])
    assert len(train) + len(held) == len(offline_pairs)


def test_pairwise_loss_prefers_the_labelled_side():
    r_hi, r_lo = torch.tensor([3.0]), torch.tensor([-3.0])
    assert pairwise_loss(r_hi, r_lo, torch.tensor([1.0])) < 0.01 < pairwise_loss(r_lo, r_hi, torch.tensor([1.0]))
    assert pairwise_loss(r_hi, r_hi, torch.tensor([0.5])) == pytest.approx(np.log(2), rel=1e-5)


def test_cache_is_computed_once_then_reused(offline_pairs, embedder, tmp_path, monkeypatch):
    cache_file = tmp_path / "emb.npz"
    first = cache_embeddings(offline_pairs, embedder, cache_file, progress=False)
    n_images = len(set(offline_pairs["image_0"]) | set(offline_pairs["image_1"]))
    assert len(first.images) == n_images and len(first.texts) == 32
    calls = []
    monkeypatch.setattr(embedder, "embed_images", lambda images, progress=False: calls.append(len(images)) or np.zeros((0, 1)))
    second = cache_embeddings(offline_pairs, embedder, cache_file, progress=False)
    assert calls == []  # nothing re-embedded
    key = offline_pairs["image_0"][0]
    np.testing.assert_array_equal(second.images[key], first.images[key])
    assert EmbeddingCache.load(cache_file).meta["weights"] == "offline-random"


def test_reward_learns_clean_over_degraded_on_held_out_pairs(offline_pairs, embedder, tmp_path):
    cache = cache_embeddings(offline_pairs, embedder, tmp_path / "emb.npz", progress=False)
    train, held = split_pairs(offline_pairs, 0.25, seed=0)
    model, history = train_reward(pair_features(train, cache), pair_features(held, cache), epochs=60,
                                  seed=0, progress=False)
    print(f"\nreward: held-out pair accuracy {history['held_out_acc'].iloc[-1]:.2f} on {len(held)} pairs "
          f"(train {history['train_acc'].iloc[-1]:.2f})")
    assert history["loss"].iloc[-1] < 0.75 * history["loss"].iloc[0]
    assert history["train_acc"].iloc[-1] > 0.9
    assert history["held_out_acc"].iloc[-1] > 0.6  # chance is 0.5; unseen source images

    path = save_reward(model, tmp_path / "reward.pt", embedder, prompt="picture 0")
    scorer = load_reward_scorer(path, embedder=embedder)
    assert isinstance(scorer, RewardScorer) and scorer.weights == "offline-random"
    images = procedural_images(2, 96, seed=9)
    assert scorer.score_images(images) == pytest.approx(RewardScorer(model, embedder, "picture 0").score_images(images), abs=1e-5)
    assert pair_accuracy(scorer.model, pair_features(held, cache)) == pytest.approx(history["held_out_acc"].iloc[-1])


def _jpeg(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    return buffer.getvalue()


def test_pickapic_parquet_is_read_filtered_and_embedded(tmp_path, embedder):
    images = [_jpeg(im) for im in procedural_images(4, 64, seed=2)]
    frame = pd.DataFrame({
        "caption": ["a cat", "a dog", "a tie", "unlabelled", "same"],
        "jpg_0": [images[0], images[1], images[2], images[3], images[0]],
        "jpg_1": [images[1], images[2], images[3], images[0], images[0]],
        "label_0": [1.0, 0.0, 0.5, None, 1.0],
        "label_1": [0.0, 1.0, 0.5, None, 0.0],
        "image_0_uid": ["u0", "u1", "u2", "u3", "u0"],
        "image_1_uid": ["u1", "u2", "u3", "u0", "u0"],
        "has_label": [True, True, True, False, True],
        "are_different": [True, True, True, True, False],
    })
    path = tmp_path / "train-00000.parquet"
    frame.to_parquet(path)
    pairs, blobs = read_pickapic_parquet(path)
    assert list(pairs["prompt"]) == ["a cat", "a dog", "a tie"]
    assert list(pairs["label"]) == [1.0, 0.0, 0.5]
    assert set(blobs) == {"u0", "u1", "u2", "u3"}
    assert len(read_pickapic_parquet(path, keep_ties=False)[0]) == 2
    cache = cache_embeddings(pairs, embedder, tmp_path / "pick.npz", image_source=blobs, progress=False)
    image0, image1, text, label = pair_features(pairs, cache)
    assert image0.shape == (3, embedder.dim) and text.shape == (3, embedder.dim)
    with pytest.raises(ValueError, match="Pick-a-Pic"):
        pd.DataFrame({"x": [1]}).to_parquet(tmp_path / "bad.parquet")
        read_pickapic_parquet(tmp_path / "bad.parquet")


def test_unreadable_images_are_reported_and_skipped(tmp_path, embedder, capsys):
    good = tmp_path / "good.png"
    procedural_images(1, 64)[0].save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    pairs = pd.DataFrame({"prompt": ["p", "p"], "image_0": [str(good), str(bad)], "image_1": [str(good), str(good)],
                          "label": [1.0, 1.0], "group": ["g", "g"]})
    cache = cache_embeddings(pairs, embedder, tmp_path / "c.npz", progress=False)
    assert "skipped 1 unreadable" in capsys.readouterr().out
    assert len(pair_features(pairs, cache)[3]) == 1
