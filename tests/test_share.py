"""Sharing a LoRA on ModelScope (issue 6, item 7): the dry run, the model card, the token kept secret."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from helpers import lora, share

SECRET = "ms-0123456789-secret-token-do-not-print"
META = dict(rank=4, alpha=2.0, target_modules=["to_q", "to_k", "to_v", "to_out"], base_model="Kwai-Kolors/Kolors",
            steps=20, trigger="二次元", dataset_fingerprint="sha256:feed", weights="offline-random", resolution=128,
            lr=1e-4, seed=0)


@pytest.fixture()
def run_dir(tmp_path, monkeypatch):
    """A run folder as training leaves it: LoRA, samples, loss plot, plus things that must stay home."""
    monkeypatch.delenv(share.TOKEN_ENV, raising=False)
    monkeypatch.setattr(share, "find_token", lambda token=None: token or __import__("os").environ.get(share.TOKEN_ENV))
    monkeypatch.setattr(share, "network_ok", lambda url, timeout=3.0: False)  # never touch the network in tests
    run = tmp_path / "lora" / "run1"
    state = {"blocks.7.transformer_blocks.0.attn1.to_q.lora_A.default.weight": torch.randn(4, 640),
             "blocks.7.transformer_blocks.0.attn1.to_q.lora_B.default.weight": torch.randn(640, 4)}
    lora.save_lora(state, run / "lora.safetensors", META)
    lora.export_lora(run / "lora.safetensors", "comfyui")
    for step in (10, 20):
        (run / "samples" / f"step_{step:06d}").mkdir(parents=True)
        Image.new("RGB", (32, 32), (step, 0, 0)).save(run / "samples" / f"step_{step:06d}" / "prompt0.png")
    Image.new("RGB", (32, 32)).save(run / "loss.png")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"x" * 100)
    (run / "train.log").write_text("log")
    return run


def test_dry_run_without_token_lists_exactly_what_would_go(run_dir, capsys):
    plan = share.upload_lora(run_dir, "someone/kolors-story-lora")
    assert plan.dry_run and not plan.uploaded and "no ModelScope token" in plan.reason
    assert list(plan.files) == ["README.md", "lora.safetensors", "lora.comfyui.safetensors",
                                "samples/step_000010/prompt0.png", "samples/step_000020/prompt0.png", "loss.png"]
    assert plan.total_bytes == sum(p.stat().st_size for p in plan.files.values())
    text = plan.summary()
    assert "DRY RUN" in text and "someone/kolors-story-lora" in text and "lora.safetensors" in text
    assert "last.ckpt" not in text and "train.log" not in text
    assert (run_dir / "README.md").is_file()


def test_model_card_has_settings_trigger_and_samples(run_dir):
    plan = share.upload_lora(run_dir, "someone/kolors-story-lora", dry_run=True)
    card = plan.model_card.read_text(encoding="utf-8")
    assert card.startswith("---\n") and "base_model:\n- Kwai-Kolors/Kolors" in card
    assert "`二次元`" in card and "| rank | 4 |" in card and "| alpha | 2.0 |" in card
    assert "| dataset_fingerprint | sha256:feed |" in card and "to_q, to_k, to_v, to_out" in card
    assert "offline random weights" in card
    assert "![samples/step_000020/prompt0.png](samples/step_000020/prompt0.png)" in card
    assert "lora.comfyui.safetensors" in card
    # a second run replaces the kit's own card, but never a README someone wrote
    share.upload_lora(run_dir, "someone/kolors-story-lora", dry_run=True)
    (run_dir / "README.md").write_text("my notes")
    with pytest.raises(FileExistsError, match="not written by the kit"):
        share.upload_lora(run_dir, "someone/kolors-story-lora", dry_run=True)
    assert (run_dir / "README.md").read_text() == "my notes"


def test_token_never_appears_in_output(run_dir, monkeypatch, capsys):
    monkeypatch.setenv(share.TOKEN_ENV, SECRET)
    plan = share.upload_lora(run_dir, "someone/kolors-story-lora")  # token, but no network: dry run
    assert plan.dry_run and "cannot reach" in plan.reason
    plan2 = share.upload_lora(run_dir, "someone/kolors-story-lora", token=SECRET, dry_run=True)
    print(plan, plan2, repr(plan))
    out = capsys.readouterr()
    assert SECRET not in out.out + out.err + plan.summary() + plan2.summary()
    assert all(SECRET not in p.read_text(errors="replace") for p in run_dir.rglob("*") if p.is_file())


def test_real_upload_path_uses_the_sdk_and_hides_the_token(run_dir, monkeypatch, capsys):
    """With a token and network, the SDK is called with the repo layout; its errors are scrubbed of the token."""
    calls = []

    class FakeHubApi:
        def __init__(self, token=None, **_):
            calls.append(("init", token == SECRET))

        def repo_exists(self, repo_id, **_):
            return False

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create", repo_id, kwargs.get("visibility")))

        def upload_folder(self, repo_id, folder_path, **kwargs):
            from pathlib import Path
            calls.append(("upload", repo_id, sorted(p.relative_to(folder_path).as_posix()
                                                    for p in Path(folder_path).rglob("*") if p.is_file())))

    import importlib
    hub_api = importlib.import_module("modelscope.hub.api")  # modelscope's lazy top-level hides attribute access
    monkeypatch.setattr(hub_api, "HubApi", FakeHubApi)
    monkeypatch.setattr(share, "network_ok", lambda url, timeout=3.0: True)
    plan = share.upload_lora(run_dir, "someone/kolors-story-lora", token=SECRET)
    assert plan.uploaded and not plan.dry_run
    assert calls[0] == ("init", True) and calls[1] == ("create", "someone/kolors-story-lora", "private")
    assert calls[2][2] == sorted(plan.files)

    class FailingHubApi(FakeHubApi):
        def upload_folder(self, repo_id, folder_path, **kwargs):
            raise PermissionError(f"401 for token {SECRET}")

    monkeypatch.setattr(hub_api, "HubApi", FailingHubApi)
    with pytest.raises(RuntimeError) as err:
        share.upload_lora(run_dir, "someone/kolors-story-lora", token=SECRET)
    assert SECRET not in str(err.value) and "***" in str(err.value)


def test_bad_input_says_what_to_do(run_dir, tmp_path):
    with pytest.raises(ValueError, match="owner/name"):
        share.upload_lora(run_dir, "no-owner")
    with pytest.raises(FileNotFoundError, match="no LoRA file"):
        share.upload_lora(tmp_path, "someone/x")


def test_token_precedence(monkeypatch):
    monkeypatch.setenv(share.TOKEN_ENV, "from-env")
    assert share.find_token("explicit") == "explicit"
    assert share.find_token() == "from-env"
