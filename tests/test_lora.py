"""LoRA files that know themselves (issue 6, items 3 and 6).

Light tests (seconds) use a tiny module with DiffSynth's UNet module names; the heavy
test loads the full-size offline Kolors UNet in DiffSynth, then in diffusers (one at a
time, fp32), and checks that a saved LoRA comes back with the trained effective weights
and makes the same output change in both frameworks. Run heavy tests under
``flock /tmp/kolors-heavy.lock``.
"""

from __future__ import annotations

import gc
import json
import logging

import pytest
import torch

from helpers import lora
from helpers.io import OutputExistsError

RANK, ALPHA = 4, 2.0  # alpha != rank on purpose: a loader that ignores alpha gets the wrong strength
META = dict(rank=RANK, alpha=ALPHA, target_modules="to_q,to_k,to_v,to_out", base_model="Kwai-Kolors/Kolors",
            steps=3, trigger="二次元", dataset_fingerprint="sha256:abc", weights="offline-random",
            resolution=128, lr=1e-4, seed=0)


# ----------------------------------------------------------------------------- tiny stand-in
class _Attn(torch.nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.to_q, self.to_k, self.to_v, self.to_out = (torch.nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x):
        return self.to_out(self.to_q(x) * torch.sigmoid(self.to_k(x)) + self.to_v(x))


class _Block(torch.nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.attn1, self.attn2 = _Attn(dim), _Attn(dim)

    def forward(self, x):
        return self.attn2(self.attn1(x))


class _Transformer(torch.nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.transformer_blocks = torch.nn.ModuleList([_Block(dim)])
        self.proj = torch.nn.Linear(dim, dim)  # not targeted

    def forward(self, x):
        return self.proj(self.transformer_blocks[0](x))


class TinyUNet(torch.nn.Module):
    """DiffSynth-style module names (``blocks.N.transformer_blocks.0.attn1.to_q``) at toy size."""

    def __init__(self, dim=8, n=2):
        super().__init__()
        torch.manual_seed(0)
        self.blocks = torch.nn.ModuleList([_Transformer(dim) for _ in range(n)])

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


class TinyPipe:
    def __init__(self):
        self.unet = TinyUNet()


def _trained_like(unet: torch.nn.Module, seed: int = 1, b_std: float = 0.1) -> dict[str, torch.Tensor]:
    """Inject a LoRA with peft the way DiffSynth's trainer does and give it non-zero weights (what training makes)."""
    from peft import LoraConfig, inject_adapter_in_model

    inject_adapter_in_model(LoraConfig(r=RANK, lora_alpha=ALPHA, init_lora_weights="gaussian",
                                       target_modules=META["target_modules"].split(",")), unet)
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, param in unet.named_parameters():
        if ".lora_" in name:
            values = torch.randn(param.shape, generator=gen, dtype=torch.float32)
            values *= b_std if ".lora_B." in name else param.shape[-1] ** -0.5
            if param.device.type != "meta":
                param.data.copy_(values)
            state[name] = values
    return state


@pytest.fixture()
def tiny_lora(tmp_path):
    trained = TinyUNet()
    state = _trained_like(trained)
    path = lora.save_lora(state, tmp_path / "lora.safetensors", META)
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        return path, state, trained(x), x


# ----------------------------------------------------------------------------- file
def test_save_read_roundtrip_keeps_types(tiny_lora):
    path, state, _, _ = tiny_lora
    meta = lora.read_lora_metadata(path)
    assert meta["rank"] == RANK and meta["alpha"] == ALPHA and meta["steps"] == 3
    assert meta["target_modules"] == ["to_q", "to_k", "to_v", "to_out"]
    assert meta["trigger"] == "二次元" and meta["weights"] == "offline-random" and meta["lr"] == 1e-4
    assert meta["format"] == lora.FORMAT
    loaded, meta2 = lora.load_lora_file(path)
    assert meta2 == meta
    assert set(loaded) == set(state)  # DiffSynth's keys, '.default.' adapter name kept
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_save_never_overwrites_and_is_atomic(tiny_lora):
    path, state, _, _ = tiny_lora
    before = path.read_bytes()
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        lora.save_lora(state, path, META)
    assert path.read_bytes() == before
    lora.save_lora(state, path, {**META, "steps": 4}, overwrite=True)
    assert lora.read_lora_metadata(path)["steps"] == 4
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary files left behind


def test_save_checks_metadata_and_rank(tiny_lora, tmp_path):
    _, state, _, _ = tiny_lora
    incomplete = {k: v for k, v in META.items() if k != "alpha"}
    with pytest.raises(ValueError, match="missing \\['alpha'\\]"):
        lora.save_lora(state, tmp_path / "a.safetensors", incomplete)
    with pytest.raises(ValueError, match="rank 8"):
        lora.save_lora(state, tmp_path / "b.safetensors", {**META, "rank": 8})
    one_sided = {k: v for k, v in state.items() if "lora_A" in k}
    with pytest.raises(ValueError, match="needs both"):
        lora.save_lora(one_sided, tmp_path / "c.safetensors", META)
    assert not any(tmp_path.glob("[abc].safetensors"))


def test_baseline_checkpoint_is_refused_with_a_way_out(tiny_lora, tmp_path):
    _, state, _, _ = tiny_lora
    ckpt = tmp_path / "epoch=0-step=500.ckpt"
    torch.save(dict(state), ckpt)  # what DiffSynth's on_save_checkpoint leaves: LoRA tensors only
    with pytest.raises(lora.NotAKitLoraError, match="import_baseline_checkpoint"):
        lora.read_lora_metadata(ckpt)
    bare = tmp_path / "bare.safetensors"
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in state.items()}, str(bare))
    with pytest.raises(lora.NotAKitLoraError, match="no 'kolors_kit' metadata"):
        lora.apply_lora(TinyPipe(), bare)

    out = lora.import_baseline_checkpoint(ckpt, rank=RANK, alpha=ALPHA, trigger="二次元")
    assert out == ckpt.with_suffix(".safetensors")
    meta = lora.read_lora_metadata(out)
    assert (meta["rank"], meta["alpha"], meta["steps"], meta["imported_from"]) == (RANK, ALPHA, 500, ckpt.name)
    with pytest.raises(ValueError, match="rank 16"):
        lora.import_baseline_checkpoint(ckpt, rank=16, alpha=4.0, out=tmp_path / "wrong.safetensors")


# ----------------------------------------------------------------------------- apply
def _effective(unet, name):
    layer = unet.get_submodule(name)
    return (layer.base_layer.weight + layer.get_delta_weight(lora.ADAPTER)) if hasattr(layer, "base_layer") else layer.weight


def test_apply_gives_trained_effective_weights_and_output(tiny_lora):
    path, state, trained_out, x = tiny_lora
    pipe = TinyPipe()  # fresh: same base weights (seed 0), no LoRA
    with torch.no_grad():
        base_out = pipe.unet(x)
    meta = lora.apply_lora(pipe, path)
    assert meta["alpha"] == ALPHA
    deltas = lora.lora_deltas(path)
    assert len(deltas) == 16
    for module, delta in deltas.items():
        base = TinyUNet().get_submodule(module).weight
        a, b = state[f"{module}.lora_A.default.weight"], state[f"{module}.lora_B.default.weight"]
        torch.testing.assert_close(_effective(pipe.unet, module), base + ALPHA / RANK * b @ a)
        torch.testing.assert_close(delta, ALPHA / RANK * b @ a)
    with torch.no_grad():
        torch.testing.assert_close(pipe.unet(x), trained_out)
        assert not torch.allclose(pipe.unet(x), base_out)
        # strength changes in place, fuse/unfuse keep the output, unload restores the base
        lora.set_lora_scale(pipe, 0.5)
        half = pipe.unet(x)
        module = next(iter(deltas))
        torch.testing.assert_close(_effective(pipe.unet, module), TinyUNet().get_submodule(module).weight + 0.5 * deltas[module])
        lora.fuse_lora(pipe)
        assert lora.loaded_lora(pipe)["fused"]
        torch.testing.assert_close(pipe.unet(x), half, rtol=1e-5, atol=1e-6)
        lora.set_lora_scale(pipe, 1.0)  # works while fused
        torch.testing.assert_close(pipe.unet(x), trained_out, rtol=1e-5, atol=1e-6)
        lora.unfuse_lora(pipe)
        torch.testing.assert_close(pipe.unet(x), trained_out)
        lora.unload_lora(pipe)
        assert lora.loaded_lora(pipe) is None
        assert not any("lora" in n for n, _ in pipe.unet.named_parameters())
        torch.testing.assert_close(pipe.unet(x), base_out, rtol=1e-6, atol=1e-7)
        # keep_original: unfuse restores the base weights bit for bit, even in bf16
        pipe16 = TinyPipe()
        pipe16.unet.to(torch.bfloat16)
        before = {n: p.clone() for n, p in pipe16.unet.named_parameters()}
        lora.apply_lora(pipe16, path, fuse=True, keep_original=True)
        lora.set_lora_scale(pipe16, 0.3)
        lora.unload_lora(pipe16)
        assert all(torch.equal(p, before[n]) for n, p in pipe16.unet.named_parameters())
        lora.apply_lora(pipe16, path, dtype=torch.float32)  # LoRA kept in fp32 on a bf16 UNet, as in training
        layer = pipe16.unet.get_submodule("blocks.0.transformer_blocks.0.attn1.to_q")
        assert layer.lora_A[lora.ADAPTER].weight.dtype == torch.float32 and layer.base_layer.weight.dtype == torch.bfloat16
        assert torch.equal(layer.lora_B[lora.ADAPTER].weight, state["blocks.0.transformer_blocks.0.attn1.to_q.lora_B.default.weight"])
        assert pipe16.unet(x.to(torch.bfloat16)).isfinite().all()
        # applying twice replaces, never stacks
        lora.apply_lora(pipe, path, scale=0.5)
        lora.apply_lora(pipe, path, scale=0.5, fuse=True)
        torch.testing.assert_close(pipe.unet(x), half, rtol=1e-5, atol=1e-6)


def test_the_baseline_half_strength_bug_cannot_happen(tiny_lora):
    """The baseline injected alpha=2 for a LoRA trained with alpha=4; the file's alpha wins here."""
    path, state, _, _ = tiny_lora
    wrong = TinyPipe()
    from peft import LoraConfig, inject_adapter_in_model
    inject_adapter_in_model(LoraConfig(r=RANK, lora_alpha=ALPHA / 2, target_modules=["to_q", "to_k", "to_v", "to_out"]),
                            wrong.unet)
    wrong.unet.load_state_dict(state, strict=False)
    right = TinyPipe()
    lora.apply_lora(right, path)
    module = "blocks.0.transformer_blocks.0.attn1.to_q"
    base = TinyUNet().get_submodule(module).weight
    wrong_delta = wrong.unet.get_submodule(module).get_delta_weight("default")
    right_delta = _effective(right.unet, module) - base
    torch.testing.assert_close(right_delta, 2 * wrong_delta)


def test_apply_refuses_a_lora_for_another_model(tiny_lora, tmp_path):
    path, state, _, _ = tiny_lora
    renamed = {k.replace("blocks.1.", "blocks.7."): v for k, v in state.items()}
    other = lora.save_lora(renamed, tmp_path / "other.safetensors", META)
    pipe = TinyPipe()
    with pytest.raises(ValueError, match="does not fit this UNet"):
        lora.apply_lora(pipe, other)
    assert not any("lora" in n for n, _ in pipe.unet.named_parameters())  # left clean


# ----------------------------------------------------------------------------- export (names only)
@pytest.fixture(scope="module")
def kolors_lora_state():
    """A rank-4 LoRA with the real Kolors UNet's DiffSynth names and shapes (built on the meta device)."""
    from diffsynth.models.sdxl_unet import SDXLUNet

    with torch.device("meta"):
        unet = SDXLUNet(is_kolors=True)
    return _trained_like(unet, b_std=0.02)


def test_name_map_is_diffsynths_converter_inverted():
    mapping = lora.diffsynth_to_diffusers_names()
    assert lora.diffusers_module_name("blocks.7.transformer_blocks.0.attn1.to_q") == \
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    assert lora.diffusers_module_name("blocks.7.transformer_blocks.0.attn1.to_out") == \
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0"
    from diffsynth.models.sdxl_unet import SDXLUNetStateDictConverter
    forward = SDXLUNetStateDictConverter().from_diffusers({v: torch.zeros(1) for v in mapping.values()})[0]
    assert set(forward) == set(mapping)  # inverting and re-applying DiffSynth's map is the identity


def test_export_formats_have_the_expected_keys(kolors_lora_state, tmp_path):
    path = lora.save_lora(kolors_lora_state, tmp_path / "lora.safetensors", META)
    n_modules = len(kolors_lora_state) // 2
    assert n_modules == 70 * 2 * 4  # 70 transformer blocks x 2 attentions x q,k,v,out

    diff = lora.export_lora(path, "diffusers")
    assert diff.name == "lora.diffusers.safetensors"
    from safetensors import safe_open
    with safe_open(str(diff), framework="pt") as f:
        keys, header = set(f.keys()), f.metadata()
        b_key = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight"
        folded = f.get_tensor(b_key)
    assert len(keys) == 2 * n_modules and all(k.startswith("unet.") for k in keys)
    assert any(k.endswith("attn2.to_out.0.lora_A.weight") for k in keys)
    config = json.loads(header["lora_adapter_metadata"])
    assert config["unet.r"] == RANK and config["unet.lora_alpha"] == RANK
    torch.testing.assert_close(folded, kolors_lora_state["blocks.7.transformer_blocks.0.attn1.to_q.lora_B.default.weight"] * ALPHA / RANK)
    assert json.loads(header["kolors_kit"])["exported_as"] == "diffusers"

    comfy = lora.export_lora(path, "comfyui", out=tmp_path / "comfy.safetensors")
    with safe_open(str(comfy), framework="pt") as f:
        keys = set(f.keys())
        alpha = f.get_tensor("lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_out_0.alpha")
    assert len(keys) == 3 * n_modules and all(k.startswith("lora_unet_") for k in keys)
    assert "lora_unet_up_blocks_0_attentions_2_transformer_blocks_9_attn2_to_k.lora_up.weight" in keys
    assert float(alpha) == ALPHA
    with pytest.raises(OutputExistsError):
        lora.export_lora(path, "comfyui", out=comfy)
    with pytest.raises(ValueError, match="choose"):
        lora.export_lora(path, "ckpt")


# ----------------------------------------------------------------------------- heavy: real UNets
def _inputs(dtype):
    gen = torch.Generator().manual_seed(0)
    return dict(
        sample=torch.randn(1, 4, 16, 16, generator=gen).to(dtype),
        timestep=torch.tensor([500]),
        encoder_hidden_states=torch.randn(1, 8, 4096, generator=gen).to(dtype),
        text_embeds=torch.randn(1, 4096, generator=gen).to(dtype),
        time_ids=torch.tensor([[128.0, 128.0, 0.0, 0.0, 128.0, 128.0]]).to(dtype),
    )


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative error ||a - b|| / ||b||: the right yardstick for bf16 outputs of two implementations."""
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.heavy
def test_kolors_unet_roundtrip_and_diffusers_export(kolors_lora_state, tmp_path, caplog):
    """Fresh DiffSynth pipeline gets the trained effective weights; diffusers gets the same output change.

    bf16 (as on CPU in the course), one framework at a time: about 12 GB peak.
    """
    from safetensors import safe_open

    from helpers.kolors import load_pipeline
    from helpers.models import resolve_models

    big = {k: v * 40 if ".lora_B." in k else v for k, v in kolors_lora_state.items()}  # an effect well above bf16 noise
    path = lora.save_lora(big, tmp_path / "lora.safetensors", META)
    models = resolve_models(("text_encoder", "unet", "vae"), verbose=False)
    dtype = torch.bfloat16
    x = _inputs(dtype)

    # --- DiffSynth: a fresh pipeline, the file applied (LoRA weights in fp32, as DiffSynth's trainer keeps them)
    pipe = load_pipeline(models, device="cpu", dtype=dtype)
    unet = pipe.unet

    def run_ds():
        with torch.no_grad():
            return unet(x["sample"], x["timestep"], x["encoder_hidden_states"], x["time_ids"], x["text_embeds"]).float()

    ds_base = run_ds()
    lora.apply_lora(pipe, path, scale=1.0, dtype=torch.float32)
    layers = dict(lora._lora_layers(unet, lora.ADAPTER))
    assert len(layers) == len(big) // 2
    with safe_open(str(models.unet), framework="pt") as f:  # base weights untouched, and the name map is right
        for module in [min(layers), max(layers)]:
            from_file = f.get_tensor(lora.diffusers_module_name(module) + ".weight").to(dtype)
            assert torch.equal(layers[module].base_layer.weight, from_file), module
    for module, layer in layers.items():  # effective weight = W + alpha/r * B @ A, as trained
        a, b = big[f"{module}.lora_A.default.weight"], big[f"{module}.lora_B.default.weight"]
        assert torch.equal(layer.lora_A[lora.ADAPTER].weight, a) and torch.equal(layer.lora_B[lora.ADAPTER].weight, b)
        assert layer.scaling[lora.ADAPTER] == ALPHA / RANK  # the file's alpha, not a guess
        delta = ALPHA / RANK * b @ a  # peft's own delta is rounded to the bf16 base dtype
        assert _rel(layer.get_delta_weight(lora.ADAPTER), delta) < 1e-2, module
    ds_lora = run_ds()
    lora.set_lora_scale(pipe, 0.0)
    ds_zero = run_ds()
    lora.set_lora_scale(pipe, 1.0)
    lora.fuse_lora(pipe)
    ds_fused = run_ds()
    lora.unload_lora(pipe)
    ds_unloaded = run_ds()
    del pipe, unet, layers
    gc.collect()

    ds_change = ds_lora - ds_base
    assert torch.isfinite(ds_lora).all()
    assert _rel(ds_lora, ds_base) > 0.05, "the LoRA should change the output noticeably"
    assert torch.equal(ds_zero, ds_base)
    # fused, then unloaded, in bf16: a rounding residue of W + d - d (about 1% here; keep_original=True avoids it,
    # tested bit-exact on the tiny model; not here, as it would copy 2 GB of weights)
    assert _rel(ds_unloaded, ds_base) < 0.03
    fused_err = _rel(ds_fused - ds_base, ds_change)
    print(f"DiffSynth: |LoRA change| / |output| = {_rel(ds_lora, ds_base):.3f}; fused vs unfused change rel. error = {fused_err:.4f}")
    assert fused_err < 0.08  # fused = unfused, up to bf16 rounding of the merged weights

    # --- diffusers: the Kolors UNet from the same files, both exports through KolorsPipeline's LoRA loader
    from diffusers import KolorsPipeline, UNet2DConditionModel
    from peft.tuners.lora import LoraLayer
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(models.unet.parent, torch_dtype=dtype)

    def run_hf():
        with torch.no_grad():
            return unet(x["sample"], x["timestep"], encoder_hidden_states=x["encoder_hidden_states"],
                        added_cond_kwargs={"text_embeds": x["text_embeds"], "time_ids": x["time_ids"]}).sample.float()

    hf_base = run_hf()
    assert _rel(hf_base, ds_base) < 0.02  # same weights, same architecture: the frameworks agree without LoRA
    for fmt in ("diffusers", "comfyui"):
        exported = lora.export_lora(path, fmt)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            state, alphas, metadata = KolorsPipeline.lora_state_dict(  # what pipe.load_lora_weights(folder, weight_name=...) does
                str(exported.parent), weight_name=exported.name, return_lora_metadata=True)
            KolorsPipeline.load_lora_into_unet(state, alphas, unet, adapter_name=fmt, metadata=metadata)
        problems = [r.getMessage() for r in caplog.records if "key" in r.getMessage().lower()]
        assert not problems, f"{fmt}: {problems}"
        assert sum(isinstance(m, LoraLayer) for m in unet.modules()) == len(big) // 2, f"{fmt}: a layer got no LoRA"
        assert len(get_peft_model_state_dict(unet, adapter_name=fmt)) == len(big), f"{fmt}: missing/unexpected keys"
        hf_change = run_hf() - hf_base
        err = _rel(hf_change, ds_change)
        print(f"{fmt}: output change |LoRA effect| / |output| = {_rel(ds_lora, ds_base):.3f}, "
              f"diffusers vs DiffSynth change rel. error = {err:.4f}")
        # bf16 noise floor: DiffSynth fused vs unfused differ by ~0.03; a wrong alpha/rank would give 0.5,
        # a wrong module map ~1 (measured here: 0.038 for both exports)
        assert err < 0.08, f"{fmt}: diffusers' output change differs from DiffSynth's by {err:.3f}"
        unet.delete_adapters(fmt)
    del unet
    gc.collect()
