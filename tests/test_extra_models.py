"""Resolution of the extra models (real when present, offline random otherwise, loud) and the V2.5 scorer."""

import dataclasses

import numpy as np
import pytest
from PIL import Image

from helpers.aesthetic_v25 import load_v25_scorer
from helpers.extra_models import ExtraSpec, resolve_extra
from helpers.models import RealWeightsUnavailable


def toy_spec(calls):
    def build(folder, seed):
        calls.append(seed)
        (folder / "config.json").write_text("{}")

    def download(folder):
        raise ConnectionError("no network here")

    return ExtraSpec("toy", "a toy model", "toy/source", "toy-model", lambda p: (p / "config.json").is_file(), build, download)


def test_offline_is_built_once_marked_and_announced(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KOLORS_KIT_MODELS", str(tmp_path))
    calls = []
    first = resolve_extra(toy_spec(calls), mode="offline")
    assert first.weights == "offline-random" and (first.path / "OFFLINE_RANDOM_WEIGHTS.json").is_file()
    assert "OFFLINE RANDOM WEIGHTS" in capsys.readouterr().out
    resolve_extra(toy_spec(calls), mode="offline")
    assert calls == [0]  # cached


def test_auto_prefers_real_weights_and_real_mode_explains_a_failed_download(tmp_path, monkeypatch):
    monkeypatch.setenv("KOLORS_KIT_MODELS", str(tmp_path))
    spec = toy_spec([])
    with pytest.raises(RealWeightsUnavailable, match="KOLORS_KIT_WEIGHTS=offline"):
        resolve_extra(spec, mode="real")
    (tmp_path / "toy-model").mkdir()
    (tmp_path / "toy-model" / "config.json").write_text("{}")
    assert resolve_extra(spec, mode="auto").weights == "real"
    assert resolve_extra(spec, mode="offline").weights == "offline-random"
    assert resolve_extra(dataclasses.replace(spec), mode="real").weights == "real"


def test_v25_scorer_uses_the_package_class_and_takes_any_image_mode():
    from aesthetic_predictor_v2_5 import AestheticPredictorV2_5Model

    scorer = load_v25_scorer(device="cpu")
    assert isinstance(scorer.model, AestheticPredictorV2_5Model)
    assert scorer.weights == "offline-random" and scorer.name == "aesthetic-v2.5"
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (80, 120, 3), dtype=np.uint8)),
              Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8), "L"),
              Image.new("RGBA", (50, 90), (200, 10, 10, 128))]
    scores = scorer.score_images(images)
    assert len(scores) == 3 and all(np.isfinite(scores)) and len(set(scores)) == 3
    assert scorer.score_images(images[:1]) == pytest.approx(scores[:1], abs=1e-5)
    assert scorer.score_images([]) == []
