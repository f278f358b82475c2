"""Model resolution: real when present, offline random otherwise, loud either way."""

import shutil

import pytest

from helpers import models as M
from helpers import offline


@pytest.fixture
def root(tmp_path):
    return tmp_path / "models"


def test_mode_comes_from_argument_then_environment(monkeypatch):
    monkeypatch.setenv(M.WEIGHTS_ENV, "offline-random")
    assert M.weights_mode() == "offline"
    assert M.weights_mode("REAL") == "real"
    monkeypatch.delenv(M.WEIGHTS_ENV)
    assert M.weights_mode() == "auto"
    with pytest.raises(ValueError, match="auto, real, offline"):
        M.weights_mode("sometimes")


def test_unknown_part_is_named(root):
    with pytest.raises(ValueError, match="lora"):
        M.resolve_models(["lora"], "offline", root=root, verbose=False)


def test_offline_build_loads_with_the_real_loaders(root, capsys):
    from aesthetics_predictor import AestheticsPredictorV2Linear
    from transformers import CLIPProcessor

    resolved = M.resolve_models(["aesthetic"], "offline", root=root)
    assert resolved.weights == M.OFFLINE and resolved.offline
    assert resolved.aesthetic == root / "offline-random" / M.SPECS["aesthetic"].relpath
    assert "OFFLINE RANDOM WEIGHTS" in capsys.readouterr().out
    assert resolved.record()["weights"] == "offline-random"
    model = AestheticsPredictorV2Linear.from_pretrained(resolved.aesthetic)
    processor = CLIPProcessor.from_pretrained(resolved.aesthetic)
    assert model.config.projection_dim == 768
    assert processor.image_processor.crop_size == {"height": 224, "width": 224}


def test_offline_set_is_cached_and_deterministic(root):
    first = M.resolve_models(["aesthetic"], "offline", root=root, verbose=False)
    weights = first.aesthetic / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    again = M.resolve_models(["aesthetic"], "offline", root=root, verbose=False)
    assert weights.stat().st_mtime_ns == stamp and not any("built now" in n for n in again.notes)
    other = M.resolve_models(["aesthetic"], "offline", root=root / "elsewhere", verbose=False)
    assert (other.aesthetic / "model.safetensors").read_bytes() == weights.read_bytes()


def test_interrupted_build_is_rebuilt(root):
    path = root / "offline-random" / M.SPECS["aesthetic"].relpath
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")  # half a build: no marker
    assert not offline.is_built(path)
    resolved = M.resolve_models(["aesthetic"], "offline", root=root, verbose=False)
    assert offline.is_built(resolved.aesthetic) and (resolved.aesthetic / "model.safetensors").exists()


def test_auto_prefers_real_weights_when_present(root):
    built = M.resolve_models(["aesthetic"], "offline", root=root, verbose=False).aesthetic
    real = root / M.SPECS["aesthetic"].relpath
    shutil.copytree(built, real)
    (real / offline.MARKER).unlink()  # what a real download looks like: no offline marker
    resolved = M.resolve_models(["aesthetic"], "auto", root=root, verbose=False)
    assert resolved.sources == {"aesthetic": "real"} and resolved.weights == "real"
    assert "OFFLINE" not in resolved.banner()
    assert M.resolve_models(["aesthetic"], "offline", root=root, verbose=False).aesthetic == built


def test_an_offline_build_is_never_taken_for_real_weights(root):
    built = M.resolve_models(["aesthetic"], "offline", root=root, verbose=False).aesthetic
    shutil.copytree(built, root / M.SPECS["aesthetic"].relpath)  # marker copied along
    assert M.resolve_models(["aesthetic"], "auto", root=root, verbose=False).weights == "offline-random"


def test_real_mode_without_weights_says_what_to_run(root, monkeypatch):
    def no_network(keys, where):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(M, "download_real", no_network)
    with pytest.raises(M.RealWeightsUnavailable, match="make models") as info:
        M.resolve_models(["aesthetic"], "real", root=root, verbose=False)
    assert "KOLORS_KIT_WEIGHTS=offline" in str(info.value)
    assert not (root / "offline-random").exists(), "real mode must not fall back silently"


def test_missing_attribute_names_the_fix(root):
    resolved = M.resolve_models(["aesthetic"], "offline", root=root, verbose=False)
    with pytest.raises(AttributeError, match="resolve_models"):
        resolved.unet


def test_command_line_lists_and_resolves(root, monkeypatch, capsys):
    monkeypatch.setenv("KOLORS_KIT_MODELS", str(root))
    assert M.main([]) == 0
    assert "Kwai-Kolors/Kolors" in capsys.readouterr().out
    assert M.main(["--resolve", "--parts", "aesthetic", "--mode", "offline"]) == 0
    assert "offline-random" in capsys.readouterr().out


def test_concurrent_builds_do_not_collide(root):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: M.resolve_models(["aesthetic"], "offline", root=root, verbose=False), range(2)))
    built = [r for r in results if any("built now" in n for n in r.notes)]
    assert len(built) == 1, "exactly one process builds; the other waits and reuses it"
    assert offline.is_built(results[0].aesthetic)
