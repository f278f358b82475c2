"""LoRA files that know themselves: save, read, apply, fuse, export.

A kit LoRA is one ``.safetensors`` file. Its tensors are the peft keys DiffSynth's
trainer keeps (``blocks.4.transformer_blocks.0.attn1.to_q.lora_A.default.weight``, on
DiffSynth's ``SDXLUNet`` module names) and its metadata says how it was made: rank,
alpha, target modules, base model, steps, trigger word, data set fingerprint (and
whatever else training passes, e.g. ``weights: offline-random``), as a JSON blob under
the ``kolors_kit`` key so numbers stay numbers.

Because rank and alpha travel with the weights, :func:`apply_lora` cannot load a LoRA at
the wrong strength (the baseline trained with alpha 4 and loaded with alpha 2: half
strength, silently). Unlike DiffSynth 1.1.9's ``load_lora`` (merged in place, alpha
ignored), the LoRA stays a separate peft layer: its ``scale`` can be changed, it can be
fused for speed and unfused, and unloaded, without rebuilding the pipeline.

:func:`export_lora` writes the two formats other tools read: diffusers
(``KolorsPipeline.load_lora_weights``) and ComfyUI / kohya (``lora_unet_...``).
Module names are translated with DiffSynth's own converter
(``SDXLUNetStateDictConverter.from_diffusers``), inverted.

Taught in ``notebooks/03_train_lora.ipynb``.
"""

from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from .io import atomic_path, check_writable

METADATA_KEY = "kolors_kit"
FORMAT = "kolors-kit-lora/1"
KEY_LAYOUT = "diffsynth-sdxl-unet-peft"  # DiffSynth SDXLUNet module names, peft lora_A/lora_B
REQUIRED = ("rank", "alpha", "target_modules", "base_model", "steps", "trigger", "dataset_fingerprint")
DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out")  # DiffSynth's trainer default
ADAPTER = "kit"  # peft adapter name apply_lora uses on the pipeline's UNet
_LORA_KEY = re.compile(r"^(?P<module>.+)\.(?P<ab>lora_A|lora_B)(?:\.(?P<adapter>[^.]+))?\.weight$")


class NotAKitLoraError(ValueError):
    """The file is not a kit LoRA (no ``kolors_kit`` metadata); the message says how to convert it."""


# --------------------------------------------------------------------------------------
# the file
# --------------------------------------------------------------------------------------

def _split_key(key: str) -> tuple[str, str]:
    """``blocks.4...to_q.lora_A.default.weight`` -> (``blocks.4...to_q``, ``lora_A``)."""
    match = _LORA_KEY.match(key)
    if not match:
        raise ValueError(f"{key!r} is not a peft LoRA weight (expected '<module>.lora_A|lora_B[.<adapter>].weight')")
    return match["module"], match["ab"]


def _canonical(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys as DiffSynth's trainer saves them (adapter name ``default``), tensors on CPU, contiguous."""
    out = {}
    for key, tensor in state_dict.items():
        module, ab = _split_key(key)
        out[f"{module}.{ab}.default.weight"] = tensor.detach().to("cpu").contiguous()
    return out


def _check_pairs(state_dict: Mapping[str, torch.Tensor], rank: int) -> list[str]:
    """Every module has lora_A [rank, in] and lora_B [out, rank]; returns the module names."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        module, ab = _split_key(key)
        modules.setdefault(module, {})[ab] = tensor
    if not modules:
        raise ValueError("the LoRA state dict is empty")
    for module, pair in modules.items():
        if set(pair) != {"lora_A", "lora_B"}:
            raise ValueError(f"{module} has only {sorted(pair)}; a LoRA layer needs both lora_A and lora_B")
        a, b = pair["lora_A"], pair["lora_B"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != rank or b.shape[1] != rank:
            raise ValueError(f"{module}: lora_A {tuple(a.shape)} / lora_B {tuple(b.shape)} do not have rank {rank} "
                             "(metadata 'rank' must be the rank the LoRA was trained with)")
    return sorted(modules)


def _normalise_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    missing = [k for k in REQUIRED if k not in metadata]
    if missing:
        raise ValueError(f"LoRA metadata is missing {missing}; pass all of {list(REQUIRED)} "
                         "(use None for an unknown trigger or fingerprint)")
    meta = dict(metadata)
    meta["rank"] = int(meta["rank"])
    meta["alpha"] = float(meta["alpha"])
    targets = meta["target_modules"]
    meta["target_modules"] = [t.strip() for t in targets.split(",")] if isinstance(targets, str) else list(targets)
    if meta["rank"] <= 0 or meta["alpha"] <= 0:
        raise ValueError(f"rank ({meta['rank']}) and alpha ({meta['alpha']}) must be positive")
    meta.setdefault("format", FORMAT)
    meta.setdefault("key_layout", KEY_LAYOUT)
    return meta


def _header(meta: dict[str, Any]) -> dict[str, str]:
    """safetensors metadata: the JSON blob, plus flat strings for tools that only show strings."""
    header = {"format": "pt", METADATA_KEY: json.dumps(meta, ensure_ascii=False, default=str)}
    for key in REQUIRED:
        value = meta.get(key)
        header[f"{METADATA_KEY}.{key}"] = ",".join(value) if isinstance(value, list) else str(value)
    return header


def save_lora(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, Any],
              overwrite: bool = False) -> Path:
    """Save a LoRA state dict and what it is as one ``.safetensors`` file, atomically.

    ``state_dict`` holds peft keys on DiffSynth's UNet module names, as
    ``LightningModelForT2ILoRA.on_save_checkpoint`` keeps them. ``metadata`` must hold
    rank, alpha, target_modules, base_model, steps, trigger and dataset_fingerprint, and
    may hold anything else JSON can store (weights, resolution, lr, seed, ...). The rank
    is checked against the tensors. An existing file is never replaced unless
    ``overwrite=True``. Taught in ``notebooks/03_train_lora.ipynb``.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path} should end in .safetensors")
    check_writable(path, overwrite)
    meta = _normalise_metadata(metadata)
    tensors = _canonical(state_dict)
    _check_pairs(tensors, meta["rank"])
    with atomic_path(path, overwrite) as tmp:
        save_file(tensors, str(tmp), metadata=_header(meta))
    return path


def _not_kit_message(path: Path) -> str:
    how = (f"Convert it with helpers.lora.import_baseline_checkpoint({str(path)!r}, rank=16, alpha=4.0) "
           "(the rank and alpha it was TRAINED with: the baseline used --lora_rank 16 --lora_alpha 4.0), "
           "which writes a kit .safetensors beside it.")
    if path.suffix == ".ckpt":
        return f"{path} is a Lightning checkpoint (like the baseline's epoch=0-step=500.ckpt), not a kit LoRA file. {how}"
    return f"{path} has no '{METADATA_KEY}' metadata, so its rank and alpha are unknown. {how}"


def read_lora_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata dict of a kit LoRA file (rank, alpha, target_modules, ...), without reading its tensors.

    Raises :class:`NotAKitLoraError` for files without kit metadata (such as the
    baseline's Lightning ``.ckpt``), saying how to convert them.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no LoRA file at {path}")
    if path.suffix != ".safetensors":
        raise NotAKitLoraError(_not_kit_message(path))
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except SafetensorError as exc:
        raise NotAKitLoraError(f"{path} is not a readable safetensors file ({exc}). {_not_kit_message(path)}") from exc
    if METADATA_KEY not in header:
        raise NotAKitLoraError(_not_kit_message(path))
    return json.loads(header[METADATA_KEY])


def load_lora_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(state_dict, metadata)`` of a kit LoRA file; the rank is checked against the tensors."""
    from safetensors.torch import load_file

    meta = read_lora_metadata(path)
    state_dict = load_file(str(path))
    _check_pairs(state_dict, int(meta["rank"]))
    return state_dict, meta


def import_baseline_checkpoint(ckpt_path: str | os.PathLike, rank: int, alpha: float,
                               out: str | os.PathLike | None = None, *,
                               target_modules: Iterable[str] = DEFAULT_TARGETS,
                               base_model: str = "Kwai-Kolors/Kolors", steps: int | None = None,
                               trigger: str | None = None, dataset_fingerprint: str | None = None,
                               extra: Mapping[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Turn a DiffSynth/Lightning LoRA checkpoint (the baseline's ``epoch=0-step=500.ckpt``) into a kit file.

    The checkpoint holds only tensors, so ``rank`` and ``alpha`` must be the values it was
    TRAINED with (baseline: 16 and 4.0). ``steps`` defaults to the ``step=N`` in the file
    name. Writes ``out`` (default: beside the checkpoint, ``.safetensors``) and returns it.
    """
    ckpt_path = Path(ckpt_path)
    checkpoint = torch.load(str(ckpt_path), map_location="cpu", weights_only=True)
    if isinstance(checkpoint, dict) and "state_dict" in checkpoint and isinstance(checkpoint["state_dict"], dict):
        checkpoint = checkpoint["state_dict"]  # a checkpoint saved without DiffSynth's on_save_checkpoint
    state_dict = {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor) and ".lora_" in k}
    if not state_dict:
        raise ValueError(f"{ckpt_path} holds no LoRA tensors (no '.lora_A'/'.lora_B' keys)")
    state_dict = {k.removeprefix("pipe.unet.").removeprefix("unet."): v for k, v in state_dict.items()}
    if steps is None:
        match = re.search(r"step=(\d+)", ckpt_path.name)
        steps = int(match.group(1)) if match else None
    meta = {"rank": rank, "alpha": alpha, "target_modules": list(target_modules), "base_model": base_model,
            "steps": steps, "trigger": trigger, "dataset_fingerprint": dataset_fingerprint,
            "imported_from": ckpt_path.name, **(extra or {})}
    return save_lora(state_dict, Path(out) if out else ckpt_path.with_suffix(".safetensors"), meta, overwrite)


def lora_deltas(path_or_state: str | os.PathLike | tuple[dict, dict], scale: float = 1.0,
                dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Per DiffSynth module: the weight change ``scale * alpha / rank * B @ A`` the LoRA makes.

    Effective weight = base weight + delta. Handy for checking a load, and what
    :func:`fuse_lora` adds into the base weights.
    """
    state_dict, meta = load_lora_file(path_or_state) if not isinstance(path_or_state, tuple) else path_or_state
    factor = scale * float(meta["alpha"]) / int(meta["rank"])
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        module, ab = _split_key(key)
        pairs.setdefault(module, {})[ab] = tensor.to(dtype)
    return {m: factor * (p["lora_B"] @ p["lora_A"]) for m, p in sorted(pairs.items())}


# --------------------------------------------------------------------------------------
# on a DiffSynth pipeline
# --------------------------------------------------------------------------------------

def _unet(pipe_or_unet) -> torch.nn.Module:
    unet = getattr(pipe_or_unet, "unet", pipe_or_unet)
    if not isinstance(unet, torch.nn.Module):
        raise TypeError("pass a DiffSynth SDXLImagePipeline (or its .unet)")
    return unet


def _lora_layers(unet: torch.nn.Module, adapter: str | None = None):
    from peft.tuners.lora import LoraLayer

    for name, module in unet.named_modules():
        if isinstance(module, LoraLayer) and (adapter is None or adapter in module.lora_A):
            yield name, module


def loaded_lora(pipe) -> dict[str, Any] | None:
    """What :func:`apply_lora` put on this pipeline: path, metadata, scale, fused; None when nothing."""
    return getattr(_unet(pipe), "_kit_lora", None)


def apply_lora(pipe, path: str | os.PathLike, scale: float = 1.0, *, fuse: bool = False,
               dtype: torch.dtype | None = None, keep_original: bool = False) -> dict[str, Any]:
    """Put a kit LoRA on a DiffSynth ``SDXLImagePipeline``'s UNet, at the strength it was trained for.

    Does what the baseline did by hand, but with rank, alpha and target modules from the
    file: peft ``LoraConfig(r, lora_alpha, target_modules)`` +
    ``inject_adapter_in_model(config, pipe.unet)``, then loads the weights and checks that
    every LoRA weight found its layer. ``scale`` multiplies alpha/rank on top
    (:func:`set_lora_scale` changes it later); ``fuse=True`` merges it into the weights
    for speed (:func:`unfuse_lora` undoes it). A LoRA already applied is unloaded first.
    The LoRA weights take the UNet's dtype unless ``dtype`` is given. Returns the file's
    metadata. Taught in ``notebooks/03_train_lora.ipynb``.
    """
    from peft import LoraConfig, inject_adapter_in_model

    unet = _unet(pipe)
    state_dict, meta = load_lora_file(path)
    if loaded_lora(pipe) is not None:
        unload_lora(pipe)
    other = {a for _, m in _lora_layers(unet) for a in m.lora_A}
    if other:
        raise RuntimeError(f"this UNet already carries peft LoRA adapters {sorted(other)} not put there by apply_lora "
                           "(a training pipeline?); load a fresh pipeline to apply a LoRA file")
    config = LoraConfig(r=int(meta["rank"]), lora_alpha=float(meta["alpha"]),
                        target_modules=list(meta["target_modules"]), init_lora_weights=True)
    inject_adapter_in_model(config, unet, adapter_name=ADAPTER)
    base = next(p for p in unet.parameters() if p.is_floating_point())
    lora_dtype = dtype or base.dtype
    for _, module in _lora_layers(unet, ADAPTER):  # peft gives the new layers the base layer's dtype
        module.lora_A[ADAPTER].to(device=base.device, dtype=lora_dtype)
        module.lora_B[ADAPTER].to(device=base.device, dtype=lora_dtype)
    weights = {key.replace(".default.weight", f".{ADAPTER}.weight"): t.to(device=base.device, dtype=lora_dtype)
               for key, t in state_dict.items()}
    expected = {f"{name}.{ab}.{ADAPTER}.weight" for name, _ in _lora_layers(unet, ADAPTER) for ab in ("lora_A", "lora_B")}
    unexpected = sorted(set(weights) - expected)
    missing = sorted(expected - set(weights))
    if unexpected or missing:
        _remove_adapter(unet)
        raise ValueError(f"{path} does not fit this UNet: {len(unexpected)} LoRA weights have no layer "
                         f"(e.g. {unexpected[:2]}), {len(missing)} layers got no weights (e.g. {missing[:2]}). "
                         f"Was it trained on {meta.get('base_model')} with target_modules {meta['target_modules']}?")
    unet.load_state_dict(weights, strict=False)
    for p in unet.parameters():
        p.requires_grad_(False)
    unet._kit_lora = {"path": str(path), "metadata": meta, "scale": 1.0, "fused": False}
    set_lora_scale(pipe, scale)
    if fuse:
        fuse_lora(pipe, keep_original=keep_original)
    return meta


def set_lora_scale(pipe, scale: float) -> None:
    """Change the applied LoRA's strength: effective weight = W + scale * alpha/rank * B @ A (no reload)."""
    unet = _unet(pipe)
    info = loaded_lora(pipe)
    if info is None:
        raise RuntimeError("no LoRA applied; call apply_lora(pipe, path) first")
    fused, keep = info["fused"], info.get("keep_original", False)
    if fused:
        unfuse_lora(pipe)
    for _, module in _lora_layers(unet, ADAPTER):
        module.set_scale(ADAPTER, float(scale))
    info["scale"] = float(scale)
    if fused:
        fuse_lora(pipe, keep_original=keep)


def fuse_lora(pipe, keep_original: bool = False) -> None:
    """Merge the applied LoRA into the UNet's weights (faster sampling); :func:`unfuse_lora` takes it back out.

    Unfusing subtracts the LoRA again: exact in fp32, but in fp16/bf16 the weights keep
    a rounding residue (about 1e-3 relative). ``keep_original=True`` keeps a copy of the
    targeted weights (about 2 GB in bf16 for the Kolors UNet) so unfusing restores them bit for bit.
    """
    info = loaded_lora(pipe)
    if info is None:
        raise RuntimeError("no LoRA applied; call apply_lora(pipe, path) first")
    if not info["fused"]:
        for _, module in _lora_layers(_unet(pipe), ADAPTER):
            if keep_original:
                module._kit_original = module.get_base_layer().weight.detach().clone()
            module.merge(adapter_names=[ADAPTER])
        info["fused"] = True
        info["keep_original"] = keep_original


def unfuse_lora(pipe) -> None:
    """Take a fused LoRA out of the weights again (the LoRA layers stay, unmerged)."""
    info = loaded_lora(pipe)
    if info is not None and info["fused"]:
        for _, module in _lora_layers(_unet(pipe), ADAPTER):
            module.unmerge()
            original = module.__dict__.pop("_kit_original", None)
            if original is not None:
                module.get_base_layer().weight.data.copy_(original)
        info["fused"] = False


def _remove_adapter(unet: torch.nn.Module) -> None:
    """Replace every LoRA-wrapped layer by its original base layer."""
    if getattr(unet, "_kit_lora", None) is not None:
        unfuse_lora(unet)
    for name, module in list(_lora_layers(unet, ADAPTER)):
        if module.merged:
            module.unmerge()
        parent_name, _, child = name.rpartition(".")
        parent = unet.get_submodule(parent_name) if parent_name else unet
        setattr(parent, child, module.get_base_layer())
    unet.__dict__.pop("_kit_lora", None)
    config = getattr(unet, "peft_config", None)  # inject_adapter_in_model leaves its config on the model
    if isinstance(config, dict):
        config.pop(ADAPTER, None)
        if not config:
            del unet.peft_config


def unload_lora(pipe) -> None:
    """Take the applied LoRA off the UNet completely (unfused first; see :func:`fuse_lora` on rounding)."""
    _remove_adapter(_unet(pipe))


# --------------------------------------------------------------------------------------
# other tools' formats
# --------------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def diffsynth_to_diffusers_names() -> dict[str, str]:
    """DiffSynth ``SDXLUNet`` parameter name -> diffusers ``UNet2DConditionModel`` name, for the Kolors UNet.

    Built by running DiffSynth's own ``SDXLUNetStateDictConverter.from_diffusers`` over the
    parameter names of a diffusers Kolors UNet (made on the meta device: no memory, no
    weights) and inverting the result.
    """
    from diffsynth.models.sdxl_unet import SDXLUNetStateDictConverter
    from diffusers import UNet2DConditionModel

    from .offline import KOLORS_UNET_CONFIG

    with torch.device("meta"):
        names = list(UNet2DConditionModel(**KOLORS_UNET_CONFIG).state_dict())
    converted = SDXLUNetStateDictConverter().from_diffusers({n: torch.zeros(1) for n in names})
    converted = converted[0] if isinstance(converted, tuple) else converted
    # from_diffusers renames key by key, in the same order it received them
    mapping = dict(zip(converted.keys(), names))
    if len(mapping) != len(names):
        raise RuntimeError("DiffSynth's converter mapped two diffusers names to one; cannot invert it")
    return mapping


def diffusers_module_name(diffsynth_module: str) -> str:
    """``blocks.4.transformer_blocks.0.attn1.to_out`` -> ``down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0``."""
    mapping = diffsynth_to_diffusers_names()
    try:
        return mapping[f"{diffsynth_module}.weight"].removesuffix(".weight")
    except KeyError:
        raise ValueError(f"{diffsynth_module!r} is not a weight of DiffSynth's Kolors UNet") from None


def _pairs(state_dict: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        module, ab = _split_key(key)
        pairs.setdefault(module, {})[ab] = tensor
    return dict(sorted(pairs.items()))


def to_diffusers_state_dict(state_dict: Mapping[str, torch.Tensor], meta: Mapping[str, Any]
                            ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """diffusers peft keys (``unet.<diffusers module>.lora_A.weight``) and the LoraConfig kwargs to load them.

    alpha/rank is folded into ``lora_B`` and ``lora_alpha`` set to the rank, so the
    strength is right in every loader, including those that ignore metadata.
    """
    rank, alpha = int(meta["rank"]), float(meta["alpha"])
    out, modules = {}, []
    for module, p in _pairs(state_dict).items():
        name = diffusers_module_name(module)
        modules.append(name)
        out[f"unet.{name}.lora_A.weight"] = p["lora_A"].contiguous()
        out[f"unet.{name}.lora_B.weight"] = (p["lora_B"].float() * (alpha / rank)).to(p["lora_B"].dtype).contiguous()
    from peft import LoraConfig

    # the full LoraConfig, as diffusers' own save_lora_weights writes it (its loader expects every field)
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=modules).to_dict()
    config = {k: sorted(v) if isinstance(v, set) else v for k, v in config.items()}
    return out, config


def to_kohya_state_dict(state_dict: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """ComfyUI / kohya keys: ``lora_unet_<diffusers key with _>.lora_down.weight / .lora_up.weight / .alpha``.

    Uses diffusers' ``convert_state_dict_to_kohya`` on the diffusers keys (unfolded
    weights), then sets each ``.alpha`` to the trained alpha (diffusers writes the rank).
    """
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya

    peft_keys = {f"unet.{diffusers_module_name(m)}.{ab}.weight": t
                 for m, p in _pairs(state_dict).items() for ab, t in p.items()}
    kohya = convert_state_dict_to_kohya(peft_keys)
    for key in [k for k in kohya if k.endswith(".alpha")]:
        kohya[key] = torch.tensor(float(meta["alpha"]))
    return kohya


def export_lora(path: str | os.PathLike, format: str = "diffusers", out: str | os.PathLike | None = None,
                overwrite: bool = False) -> Path:
    """Write a kit LoRA in another tool's format; returns the new file.

    - ``format="diffusers"``: for ``KolorsPipeline.load_lora_weights(out)`` (diffusers
      >= 0.34; peft keys on diffusers' module names, LoraConfig in the
      ``lora_adapter_metadata`` header). Also loads in ComfyUI.
    - ``format="comfyui"`` (alias ``"kohya"``): ``lora_unet_...`` keys with ``.alpha``,
      the form ComfyUI, A1111-style tools and diffusers' kohya loader read.

    ``out`` defaults to ``<name>.<format>.safetensors`` beside ``path``. The kit metadata
    is kept in the header (with ``exported_as``). Taught in ``notebooks/03_train_lora.ipynb``.
    """
    from safetensors.torch import save_file

    fmt = {"kohya": "comfyui"}.get(format.lower(), format.lower())
    if fmt not in {"diffusers", "comfyui"}:
        raise ValueError(f"format={format!r}: choose 'diffusers' or 'comfyui'")
    path = Path(path)
    out = Path(out) if out else path.with_name(f"{path.stem}.{fmt}.safetensors")
    check_writable(out, overwrite)
    state_dict, meta = load_lora_file(path)
    meta = {**meta, "exported_as": fmt, "exported_from": path.name}
    header = {"format": "pt", METADATA_KEY: json.dumps(meta, ensure_ascii=False, default=str)}
    if fmt == "diffusers":
        tensors, config = to_diffusers_state_dict(state_dict, meta)
        header["lora_adapter_metadata"] = json.dumps({f"unet.{k}": v for k, v in config.items()}, sort_keys=True,
                                                     default=str)
    else:
        tensors = to_kohya_state_dict(state_dict, meta)
        header.update({"ss_network_dim": str(meta["rank"]), "ss_network_alpha": str(meta["alpha"]),
                       "ss_base_model_version": "kolors", "ss_network_module": "networks.lora"})
    with atomic_path(out, overwrite) as tmp:
        save_file(tensors, str(tmp), metadata=header)
    return out
