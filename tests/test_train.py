"""LoRA training (helpers.train, helpers.cache): options, cache, resume, cached == uncached loss.

The heavy tests load the full-size offline Kolors UNet (about 11 GB of RAM): one
interrupted + resumed training run is shared by every assertion about a run, and one
pipeline with all three models checks that cached conditioning gives DiffSynth's loss.
"""

import csv
import json

import pytest
import torch

from helpers import cache as kc
from helpers import train as kt


# ------------------------------------------------------------------------------------------------ light

def test_help_text_covers_the_options(capsys):
    with pytest.raises(SystemExit):
        kt.parse_args(["--help"])
    out = capsys.readouterr().out
    for option in ("--lora_rank", "--lora_alpha", "--learning_rate", "--max_steps", "--resolution", "--precision",
                   "--use_gradient_checkpointing", "--no_gradient_checkpointing", "--seed", "--output_path",
                   "--dataset_path", "--resume", "--no_cache", "--sample_prompts", "--stop_after_steps"):
        assert option in out, option


def test_parser_actions_all_have_help(monkeypatch):
    import argparse

    seen = []
    real_parse = argparse.ArgumentParser.parse_args

    def spy(self, argv=None, namespace=None):
        seen.append(self)
        return real_parse(self, argv, namespace)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", spy)
    kt.parse_args(["--dataset_path", "x"])
    actions = [a for a in seen[0]._actions if a.dest != "help"]
    assert actions and all(a.help for a in actions), [a.dest for a in actions if not a.help]


@pytest.mark.parametrize("argv, message", [
    (["--resolution", "100"], "multiple of 64"),
    (["--precision", "16-mixed", "--device", "cpu"], "needs a GPU"),
    (["--modelscope_access_token", "secret"], "MODELSCOPE_API_TOKEN"),
    (["--pretrained_lora_path", "a.ckpt"], "--resume"),
    (["--random_flip"], "--no_cache"),
    (["--max_steps", "4", "--stop_after_steps", "5"], "stop_after_steps"),
])
def test_bad_options_say_what_to_do(argv, message):
    with pytest.raises(ValueError, match=message):
        kt.parse_args(["--dataset_path", "x", *argv])


def test_resolution_and_steps_follow_diffsynth_meaning():
    args = kt.parse_args(["--dataset_path", "x", "--resolution", "128", "--max_epochs", "2", "--steps_per_epoch", "3",
                          "--device", "cpu"])
    assert (args.height, args.width, args.max_steps, args.precision, args.sample_size) == (128, 128, 6, "bf16", 128)


def test_missing_dataset_points_to_notebook_02(tmp_path):
    with pytest.raises(kc.DatasetError, match="02_data"):
        kc.read_metadata(tmp_path / "nothing")
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "metadata.csv").write_text("file,caption\na.jpg,x\n")
    with pytest.raises(kc.DatasetError, match="file_name"):
        kc.read_metadata(tmp_path)


def test_fingerprint_changes_with_captions_and_pixels(tmp_path):
    ds = kc.synthetic_dataset(tmp_path / "ds", n=2, size=64)
    first = kc.dataset_fingerprint(ds)
    assert first == kc.dataset_fingerprint(ds) and len(first) == 16
    csv_path = ds / "train" / "metadata.csv"
    csv_path.write_text(csv_path.read_text(encoding="utf-8").replace("图0", "图X"), encoding="utf-8")
    second = kc.dataset_fingerprint(ds)
    assert second != first
    (ds / "train" / "0001.jpg").write_bytes(b"not an image any more")
    assert kc.dataset_fingerprint(ds) != second


def test_trigger_is_the_shared_first_word(tmp_path):
    ds = kc.synthetic_dataset(tmp_path / "ds", n=3, size=64, caption="二次元")
    assert kt.caption_trigger(ds) == "二次元"


def test_cached_prompter_and_dataset_serve_what_was_stored(tmp_path):
    cache = kc.ConditioningCache(tmp_path / "cache", text_id="t", image_id="i")
    for caption, value in (("a", 1.0), ("b", 2.0)):
        cache.save_text(caption, torch.full((1, 8), value), torch.full((1, 4, 8), value))
    pooled, emb = kc.CachedPrompter(cache).encode_prompt(["b", "a"], device="cpu")
    assert pooled.shape == (2, 8) and emb.shape == (2, 4, 8)
    assert pooled[:, 0].tolist() == [2.0, 1.0]
    with pytest.raises(KeyError, match="not in the conditioning cache"):
        kc.CachedPrompter(cache).encode_prompt("c", device="cpu")
    latent = cache.save_latents(cache.latent_path("sha", 64, 64, True), torch.ones(4, 8, 8))
    dataset = kc.CachedLatentDataset([("a", latent)], steps_per_epoch=5)
    item = dataset[3]
    assert len(dataset) == 5 and item["text"] == "a" and item["latents"].shape == (4, 8, 8)


def test_run_folder_is_never_silently_reused(tmp_path):
    args = kt.parse_args(["--dataset_path", "x", "--output_path", str(tmp_path), "--run_name", "r"])
    folder = kt.prepare_run_folder(args)
    (folder / "loss.csv").write_text("step,loss,lr,seconds\n")
    from helpers.io import OutputExistsError

    with pytest.raises(OutputExistsError, match="--resume"):
        kt.prepare_run_folder(args)
    args.resume = "latest"
    with pytest.raises(FileNotFoundError, match="no checkpoints"):
        kt.find_resume_checkpoint(args, kt.prepare_run_folder(args))


def test_bad_image_is_skipped_not_fatal(tmp_path):
    ds = kc.synthetic_dataset(tmp_path / "ds", n=2, size=64)
    (ds / "train" / "0001.jpg").write_bytes(b"broken")

    class FakeVAE(torch.nn.Module):  # stands in for the VAE: only the skipping is under test here
        def forward(self, image):
            return image[:, :4, ::8, ::8]

    class Pipe(torch.nn.Module):
        device, torch_dtype = "cpu", torch.float32

        def __init__(self):
            super().__init__()
            self.vae_encoder = FakeVAE()

        def encode_prompt(self, prompt, positive=True):
            return {"add_text_embeds": torch.zeros(1, 8), "encoder_hidden_states": torch.zeros(1, 4, 8)}

    cache = kc.ConditioningCache(tmp_path / "cache", text_id="t", image_id="i")
    report = kc.encode_dataset(Pipe(), ds, cache, 64, 64)
    assert len(report.items) == 1 and len(report.skipped) == 1 and "0001.jpg" in report.skipped[0][0]
    (ds / "train" / "0001.jpg").unlink()
    meta = ds / "train" / "metadata.csv"
    meta.write_text("\n".join(meta.read_text(encoding="utf-8").splitlines()[:2]) + "\n", encoding="utf-8")
    report = kc.encode_dataset(lambda: pytest.fail("encoders loaded although all is cached"), ds, cache, 64, 64)
    assert report.reused == 1 and not report.loaded_encoders


# ------------------------------------------------------------------------------------------------ heavy

STEPS, STOP = 3, 2


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One tiny run, interrupted after STOP steps and resumed to STEPS (shared by the run tests)."""
    root = tmp_path_factory.mktemp("train")
    ds = kc.synthetic_dataset(root / "ds", n=3, size=80)
    argv = ["--dataset_path", str(ds), "--output_path", str(root / "out"), "--resolution", "64",
            "--max_steps", str(STEPS), "--lora_rank", "4", "--lora_alpha", "2", "--checkpoint_every", "2",
            "--sample_steps", "2", "--sample_prompts", "二次元，女孩", "--run_name", "tiny", "--seed", "3"]
    first = kt.main(kt.parse_args(argv + ["--stop_after_steps", str(STOP)]))
    second = kt.main(kt.parse_args(argv + ["--resume"]))
    return {"first": first, "second": second, "folder": kt.run_folder(kt.parse_args(argv)), "dataset": ds}


@pytest.mark.heavy
def test_interrupted_run_resumes_to_the_target(trained_run):
    first, second = trained_run["first"], trained_run["second"]
    assert not first["finished"] and first["global_step"] == STOP and first["lora"] is None
    assert second["finished"] and second["global_step"] == STEPS
    assert second["resumed_from"].endswith(f"step-{STOP:06d}.ckpt")
    with open(trained_run["folder"] / "loss.csv") as handle:
        steps = [int(r["step"]) for r in csv.DictReader(handle)]
    assert steps == list(range(1, STEPS + 1))
    last = torch.load(kt.list_checkpoints(trained_run["folder"] / "checkpoints")[-1], weights_only=False)
    assert last["global_step"] == STEPS
    # AdamW's own step count: STEPS only if the optimizer state came back from the checkpoint
    assert {float(s["step"]) for s in last["optimizer_states"][0]["state"].values()} == {float(STEPS)}


@pytest.mark.heavy
def test_lora_file_holds_the_trained_weights_and_knows_itself(trained_run):
    from helpers.lora import load_lora_file

    folder = trained_run["folder"]
    last = torch.load(kt.list_checkpoints(folder / "checkpoints")[-1], weights_only=False)
    weights, meta = load_lora_file(folder / "lora.safetensors")
    assert weights and all(".lora_A.default.weight" in k or ".lora_B.default.weight" in k for k in weights)
    assert {f"pipe.unet.{k}" for k in weights} == set(last["state_dict"])
    assert all(torch.equal(v, last["state_dict"][f"pipe.unet.{k}"]) for k, v in weights.items())
    assert any(float(v.abs().max()) > 0 for k, v in weights.items() if "lora_B" in k), "LoRA B never moved"
    for key in ("rank", "alpha", "target_modules", "base_model", "steps", "trigger", "dataset_fingerprint", "weights"):
        assert key in meta, key
    assert meta["rank"] == 4 and meta["alpha"] == 2.0 and meta["steps"] == STEPS
    assert meta["weights"] == "offline-random" and meta["trigger"] == "二次元"
    assert meta["dataset_fingerprint"] == kc.dataset_fingerprint(trained_run["dataset"])


@pytest.mark.heavy
def test_run_shows_its_learning(trained_run):
    import numpy as np
    from PIL import Image

    folder = trained_run["folder"]
    assert (folder / "loss.png").stat().st_size > 0
    samples = sorted(p.name for p in (folder / "samples").iterdir())
    assert samples[0] == "step-000000" and samples[-1] == f"step-{STEPS:06d}"
    for step in samples:
        pixels = np.asarray(Image.open(folder / "samples" / step / "prompt0-seed0.png"))
        assert pixels.shape == (64, 64, 3) and np.isfinite(pixels).all()
    run = json.loads((folder / "run.json").read_text())
    assert run["weights"] == "offline-random" and run["cached_conditioning"] and run["global_step"] == STEPS


@pytest.mark.heavy
def test_cached_conditioning_gives_diffsynths_loss(tmp_path):
    """DiffSynth's training_step with the text encoder + VAE == the same step on cached conditioning."""
    from diffsynth.data.simple_text_image import TextImageDataset

    from helpers.models import resolve_models

    models = resolve_models(["text_encoder", "unet", "vae"], verbose=False)
    ds = kc.synthetic_dataset(tmp_path / "ds", n=2, size=80)
    module = kt.KolorsLoRA([models.text_encoder, models.unet, models.vae], torch_dtype=torch.bfloat16, lora_rank=4,
                           lora_alpha=4, use_gradient_checkpointing=False)
    item = TextImageDataset(str(ds), steps_per_epoch=1, height=64, width=64, center_crop=True)[0]
    uncached_batch = {"text": [item["text"]], "image": item["image"].unsqueeze(0)}
    with torch.no_grad(), kc.autocast_for("cpu", torch.bfloat16):
        torch.manual_seed(11)
        uncached = module.training_step(uncached_batch, 0)

        cache = kc.ConditioningCache(tmp_path / "cache", text_id="t", image_id="i")
        report = kc.encode_dataset(module.pipe, ds, cache, 64, 64)
        latents = dict(report.items)[item["text"]]
        from safetensors.torch import load_file

        cached_batch = {"text": [item["text"]], "image": torch.zeros(1, 0),
                        "latents": load_file(str(latents))["latents"].unsqueeze(0)}
        module.pipe.text_encoder_kolors = module.pipe.vae_encoder = None  # prove they are not used
        kc.use_cached_conditioning(module.pipe, cache)
        torch.manual_seed(11)
        cached = module.training_step(cached_batch, 0)
    assert torch.isfinite(uncached)
    assert torch.allclose(cached.float(), uncached.float(), rtol=1e-5, atol=0), (float(cached), float(uncached))
