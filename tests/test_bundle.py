"""Reproducibility bundles: packing (light) and regenerating + checking (heavy: one pipeline load).

Run the heavy test under ``flock /tmp/kolors-heavy.lock``.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from helpers import bundle as B
from helpers.io import OutputExistsError
from helpers.models import resolve_models
from helpers.panels import generate_panels, plan_run, run_dir
from helpers.storyboard import load_storyboard, validate_storyboard

SIZE, STEPS = 64, 2
RANK, ALPHA = 4, 4.0
META = dict(rank=RANK, alpha=ALPHA, target_modules="to_q", base_model="Kwai-Kolors/Kolors", steps=1,
            trigger="二次元", dataset_fingerprint="sha256:test", weights="offline-random")


def tiny_story():
    return validate_storyboard({"title": "小测试", "scenes": [
        {"caption": "上课", "positive": "古风，水墨画，少女在教室", "negative": "模糊", "seed": 21},
        {"caption": "做梦", "positive": "古风，水墨画，桃花小路", "negative": "模糊", "seed": 22, "cfg": 3.0},
    ]}, name="tiny")


def small_lora(path):
    """A rank-4 LoRA on every ``to_q`` of the real Kolors UNet (shapes from a meta-device UNet)."""
    from diffsynth.models.sdxl_unet import SDXLUNet
    from peft import LoraConfig, inject_adapter_in_model

    from helpers.lora import save_lora

    with torch.device("meta"):
        unet = SDXLUNet(is_kolors=True)
    inject_adapter_in_model(LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=["to_q"]), unet)
    gen = torch.Generator().manual_seed(0)
    state = {n: torch.randn(p.shape, generator=gen) * (0.5 if ".lora_B." in n else p.shape[-1] ** -0.5)
             for n, p in unet.named_parameters() if ".lora_" in n}
    return save_lora(state, path, META)


def fake_run(tmp_path, lora=None):
    """A run folder as generate_panels writes it, with noise panels (no pipeline)."""
    from helpers.io import write_json

    models = resolve_models(("text_encoder", "unet", "vae"), verbose=False)
    story = tiny_story()
    folder = run_dir(story, "base", tmp_path)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for s in plan_run(story, models, width=SIZE, height=SIZE, steps=STEPS)["scenes"]:
        Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).save(folder / s["file"])
    write_json(folder / "manifest.json", plan_run(story, models, width=SIZE, height=SIZE, steps=STEPS, lora=lora))
    return folder


# --- light ------------------------------------------------------------------------------

def test_make_bundle_contents_and_file_check(tmp_path):
    from helpers.panels import lora_record

    lora_file = small_lora(tmp_path / "lora" / "lora.safetensors")
    run = fake_run(tmp_path, lora=lora_record(lora_file, 0.8))
    out = B.make_bundle(run, tmp_path / "bundle")
    names = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert names == {"bundle.json", "manifest.json", "storyboard.yaml", "seeds.csv", "lora/lora.safetensors",
                     "lora/metadata.json", "panels/panel_01.png", "panels/panel_02.png"}
    record = json.loads((out / "bundle.json").read_text())
    assert record["weights"] == "offline-random" and record["lora"]["scale"] == 0.8
    assert record["lora"]["path"] == "lora/lora.safetensors"
    assert record["versions"]["diffsynth"] == "1.1.9" and record["versions"]["torch"]
    assert record["tolerance"] == {"mean_abs": B.MEAN_TOLERANCE, "max_abs": B.MAX_TOLERANCE, "scale": "0-255 per channel"}
    assert json.loads((out / "lora/metadata.json").read_text())["rank"] == RANK
    story = load_storyboard(out / "storyboard.yaml")
    assert [s.seed for s in story.scenes] == [21, 22] and story.scenes[1].cfg == 3.0
    assert story.scenes[0].size == (SIZE, SIZE) and story.scenes[0].steps == STEPS
    assert (out / "seeds.csv").read_text().splitlines()[1].startswith("1,panel_01.png,21,64,64,2,")
    assert B.verify_files(out) == {}
    assert not list(tmp_path.glob(".bundle.*")), "no temporary folder left behind"

    with pytest.raises(OutputExistsError):
        B.make_bundle(run, out)
    Image.new("RGB", (SIZE, SIZE)).save(out / "panels" / "panel_02.png")
    (out / "seeds.csv").unlink()
    assert B.verify_files(out) == {"panels/panel_02.png": "changed", "seeds.csv": "missing"}


def test_make_bundle_refuses_incomplete_runs(tmp_path):
    with pytest.raises(B.BundleError, match="no manifest.json"):
        B.make_bundle(tmp_path, tmp_path / "b")
    run = fake_run(tmp_path)
    (run / "panel_02.png").unlink()
    with pytest.raises(B.BundleError, match="missing"):
        B.make_bundle(run, tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_pixel_difference():
    a = Image.new("RGB", (8, 8), (10, 10, 10))
    b = a.copy()
    ImageDraw.Draw(b).rectangle([0, 0, 1, 1], fill=(50, 10, 10))
    assert B.pixel_difference(a, a) == {"max_abs": 0.0, "mean_abs": 0.0}
    d = B.pixel_difference(a, b)
    assert d["max_abs"] == 40 and d["mean_abs"] == pytest.approx(40 * 4 / (8 * 8 * 3))
    assert B.pixel_difference(a, Image.new("RGB", (4, 4)))["max_abs"] == float("inf")


def test_cli_help_and_make(tmp_path, capsys):
    for argv in (["--help"], ["make", "--help"], ["check", "--help"]):
        with pytest.raises(SystemExit) as exit_:
            B.parse_args(argv)
        assert exit_.value.code == 0
    assert "--mean-tolerance" in capsys.readouterr().out
    run = fake_run(tmp_path)
    assert B.main(B.parse_args(["make", str(run), str(tmp_path / "b")])) == 0
    assert "lora: no, weights: offline-random" in capsys.readouterr().out


# --- heavy: one pipeline load -------------------------------------------------------------

@pytest.mark.heavy
def test_check_passes_untouched_and_fails_tampered(tmp_path):
    from helpers.kolors import load_pipeline
    from helpers.lora import apply_lora, loaded_lora
    from helpers.panels import lora_record

    models = resolve_models(("text_encoder", "unet", "vae"), verbose=False)
    pipe = load_pipeline(models)
    lora_file = small_lora(tmp_path / "lora" / "lora.safetensors")
    apply_lora(pipe, lora_file, scale=0.8)
    story = tiny_story()
    run = generate_panels(pipe, story, run_dir(story, "lora", tmp_path), models, width=SIZE, height=SIZE,
                          steps=STEPS, lora=lora_record(lora_file, 0.8), progress=False)
    bundle = B.make_bundle(run.folder, tmp_path / "bundle")

    ok = B.check_bundle(bundle, pipe, models=models, progress=False)
    assert ok.passed, ok.summary()
    assert list(ok.table["panel"]) == [1, 2] and (ok.table["max_abs"] == 0).all(), "same machine: exact"
    assert "REPRODUCED" in ok.summary() and "offline-random" in ok.summary()
    assert loaded_lora(pipe)["scale"] == 0.8, "the caller's LoRA is put back"

    # an edited submitted image: its panel fails, the other still matches
    tampered = bundle / "panels" / "panel_02.png"
    image = Image.open(tampered).convert("RGB")
    ImageDraw.Draw(image).rectangle([8, 8, 40, 40], fill=(255, 0, 255))
    image.save(tampered)
    bad = B.check_bundle(bundle, pipe, models=models, progress=False)
    assert not bad.passed and list(bad.table["matches"]) == [True, False]
    assert bad.table.loc[1, "mean_abs"] > B.MEAN_TOLERANCE and bad.file_problems == {"panels/panel_02.png": "changed"}
    assert "NOT REPRODUCED" in bad.summary()
