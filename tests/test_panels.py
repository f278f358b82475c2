"""Panels from a storyboard with the real DiffSynth Kolors pipeline on the offline set.

The pipeline is loaded once for the module (about 25 s and 12 GB); panels are 64 px, 2 steps.
Light tests (no pipeline) come first.
"""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers.io import OutputExistsError
from helpers.layout import make_strip, strip_geometry
from helpers.models import resolve_models
from helpers.panels import (compare_runs, find_lora, generate_panels, load_manifest, panel_stats, plan_run,
                            run_dir)
from helpers.storyboard import validate_storyboard

SIZE, STEPS = 64, 2


def tiny_story():
    return validate_storyboard({"title": "小测试", "scenes": [
        {"caption": "上课", "positive": "古风，水墨画，少女在教室", "negative": "模糊", "seed": 11},
        {"caption": "做梦", "positive": "古风，水墨画，桃花小路", "negative": "模糊", "seed": 12, "cfg": 3.0},
    ]}, name="tiny")


# --- light ------------------------------------------------------------------------------

def test_run_dir_and_bad_run_names(tmp_path):
    assert run_dir(tiny_story(), "base", tmp_path) == tmp_path / "tiny" / "base"
    for bad in ("", "a/b", ".hidden"):
        with pytest.raises(ValueError, match="plain folder name"):
            run_dir(tiny_story(), bad, tmp_path)


def test_panel_stats_flags_flat_images():
    assert panel_stats(Image.new("RGB", (8, 8), (0, 0, 0)))["constant"]
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8))
    stats = panel_stats(noisy)
    assert not stats["constant"] and stats["finite"] and stats["std"] > 10


def test_find_lora_newest_or_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="run notebooks/03_train_lora.ipynb first"):
        find_lora(tmp_path)
    for name in ("a", "b"):
        (tmp_path / "lora" / name).mkdir(parents=True)
        (tmp_path / "lora" / name / "lora.safetensors").write_bytes(b"x")
    assert find_lora(tmp_path, "a").parent.name == "a"
    with pytest.raises(FileNotFoundError, match=r"\['a', 'b'\]"):
        find_lora(tmp_path, "c")


def test_compare_runs_verdict():
    story = tiny_story()
    base = pd.DataFrame({"score": [5.0, 6.5]})
    lora = pd.DataFrame({"score": [6.2, float("nan")]})
    table, verdict = compare_runs(story, {"base": base, "LoRA": lora})
    assert list(table["LoRA - base"].round(2)[:1]) == [1.2]
    assert list(table["best"]) == ["LoRA", "base"]
    assert verdict["runs"]["base"]["mean"] == pytest.approx(5.75) and not verdict["runs"]["base"]["passes"]
    assert verdict["runs"]["LoRA"]["panels_failed"] == [2] and verdict["runs"]["LoRA"]["passes"]
    assert verdict["best_mean"] == "LoRA" and "below 6.0" in verdict["summary"]
    with pytest.raises(ValueError, match="3 scores for 2 scenes"):
        compare_runs(story, {"base": base, "LoRA": pd.DataFrame({"score": [1.0, 2.0, 3.0]})})


# --- with the pipeline ------------------------------------------------------------------

@pytest.fixture(scope="module")
def models():
    return resolve_models(("text_encoder", "unet", "vae"), verbose=False)


@pytest.fixture(scope="module")
def pipe(models):
    from helpers.kolors import load_pipeline

    return load_pipeline(models)


@pytest.mark.heavy
def test_generate_resume_manifest_layout(pipe, models, tmp_path):
    story = tiny_story()
    folder = run_dir(story, "base", tmp_path)
    first = generate_panels(pipe, story, folder, models, width=SIZE, height=SIZE, steps=STEPS, cfg=4.0,
                            progress=False)
    assert first.generated == [1, 2] and first.skipped == []
    images = [Image.open(p) for p in first.panels]
    for image in images:
        pixels = np.asarray(image, dtype=np.float32)
        assert image.size == (SIZE, SIZE) and np.isfinite(pixels).all()
        assert pixels.std() > 1.0, "a panel is a flat image: the offline pipeline produced nothing"
    assert not np.array_equal(np.asarray(images[0]), np.asarray(images[1])), "different seeds, different panels"

    manifest = load_manifest(folder)
    assert manifest["weights"] == "offline-random"
    assert manifest["storyboard"]["name"] == "tiny" and manifest["lora"] is None
    assert manifest["settings"] == {"width": SIZE, "height": SIZE, "steps": STEPS, "cfg": 4.0}
    assert [s["seed"] for s in manifest["scenes"]] == [11, 12]
    assert manifest["scenes"][1]["cfg"] == 3.0 and manifest["scenes"][0]["positive"] == "古风，水墨画，少女在教室"
    assert set(manifest["models"]) == {"text_encoder", "unet", "vae"}
    assert manifest["pipeline"]["class"] == "diffsynth.SDXLImagePipeline" and manifest["pipeline"]["diffsynth"] == "1.1.9"
    assert set(manifest["panels"]) == {"panel_01.png", "panel_02.png"}
    assert all(not p["constant"] and p["seconds"] > 0 for p in manifest["panels"].values())

    # Same settings: nothing regenerated, nothing touched.
    before = [p.stat().st_mtime_ns for p in first.panels]
    again = generate_panels(pipe, story, folder, models, width=SIZE, height=SIZE, steps=STEPS, progress=False)
    assert again.generated == [] and again.skipped == [1, 2]
    assert [p.stat().st_mtime_ns for p in first.panels] == before

    # A lost panel is made again, identical: the seed makes it deterministic.
    original = np.asarray(images[1]).copy()
    first.panels[1].unlink()
    resumed = generate_panels(pipe, story, folder, models, width=SIZE, height=SIZE, steps=STEPS, progress=False)
    assert resumed.generated == [2] and resumed.skipped == [1]
    assert np.array_equal(np.asarray(Image.open(first.panels[1])), original)

    # Other settings into the same folder: refused, not mixed.
    with pytest.raises(OutputExistsError, match="different settings, scenes"):
        generate_panels(pipe, story, folder, models, width=SIZE, height=SIZE, steps=STEPS + 1, progress=False)
    lora = {"path": "/x/lora.safetensors", "scale": 0.5, "metadata": {"rank": 4}}
    with pytest.raises(OutputExistsError, match="different lora"):
        generate_panels(pipe, story, folder, models, width=SIZE, height=SIZE, steps=STEPS, lora=lora, progress=False)
    assert plan_run(story, models, width=SIZE, height=SIZE, steps=STEPS, lora=lora)["lora"]["scale"] == 0.5

    # Panels without a manifest are not adopted.
    stray = tmp_path / "stray"
    stray.mkdir()
    Image.new("RGB", (8, 8)).save(stray / "panel_01.png")
    with pytest.raises(OutputExistsError, match="no manifest.json"):
        generate_panels(pipe, story, stray, models, width=SIZE, height=SIZE, steps=STEPS, progress=False)

    # The strip of this run: 1 row x 2, geometry as computed.
    strip = make_strip(first.panels, rows=1, cols=2, gutter=4, margin=4)
    g = strip_geometry(2, 1, 2, (SIZE, SIZE), 4, 4)
    assert strip.size == (g.width, g.height) == (4 + SIZE + 4 + SIZE + 4, SIZE + 8)
    assert np.array_equal(np.asarray(strip)[4:4 + SIZE, 4 + SIZE + 4:4 + 2 * SIZE + 4],
                          np.asarray(Image.open(first.panels[1]).convert("RGB")))
