"""Share a trained LoRA on ModelScope: the LoRA, a model card and the sample images.

``upload_lora(run_dir, "your-name/kolors-story-lora")`` collects what a training run
left in its folder (``lora.safetensors``, its diffusers / ComfyUI exports, samples and
the loss curve), writes a model card ``README.md`` from the LoRA's own metadata, and
uploads them with ModelScope's SDK (``modelscope.hub.api.HubApi``).

Without a token (``MODELSCOPE_API_TOKEN`` or a ``modelscope login``), without network,
or with ``dry_run=True`` it is a dry run: it lists exactly what would be uploaded (files,
sizes, target repository) and still writes the model card, so you can read it first.
The token is only read from the argument, the environment or the SDK's login; it is
never printed, logged or written.

Taught in ``notebooks/03_train_lora.ipynb``.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from .io import write_text
from .lora import read_lora_metadata

TOKEN_ENV = "MODELSCOPE_API_TOKEN"
DEFAULT_ENDPOINT = "https://www.modelscope.cn"
CARD_MARKER = "<!-- written by kolors-story-kit helpers.share; edits here are replaced on the next upload -->"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}


@dataclass
class UploadPlan:
    """What an upload sends (``files``: path in repo -> local file) and what happened."""

    model_id: str
    endpoint: str
    run_dir: Path
    files: dict[str, Path]
    model_card: Path
    dry_run: bool
    reason: str  # why it is (or is not) a dry run; never contains the token
    uploaded: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files.values())

    def summary(self) -> str:
        """A table of the files with sizes, the target repository and whether it was sent."""
        head = "DRY RUN (nothing sent)" if self.dry_run else ("uploaded" if self.uploaded else "not uploaded")
        lines = [f"{head}: {self.reason}", f"target: {self.endpoint}/models/{self.model_id}",
                 f"{'path in repo':52s} {'size':>10s}  local file"]
        for name, local in self.files.items():
            lines.append(f"{name:52s} {_size(local.stat().st_size):>10s}  {local}")
        lines.append(f"{len(self.files)} files, {_size(self.total_bytes)}; model card: {self.model_card}")
        lines += self.notes
        return "\n".join(lines)

    def __repr__(self) -> str:  # notebooks show the table, not a dataclass dump
        return self.summary()


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def find_token(token: str | None = None) -> str | None:
    """The ModelScope token: the argument, else ``$MODELSCOPE_API_TOKEN``, else the SDK's saved login; None if none."""
    if token:
        return token
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV]
    try:  # `modelscope login` keeps a session in ~/.modelscope/credentials
        from modelscope_hub.config import HubConfig

        return HubConfig().load_token() or None
    except Exception:
        return None


def endpoint() -> str:
    """The ModelScope site the SDK talks to (``MODELSCOPE_DOMAIN`` moves it)."""
    try:
        from modelscope_hub.config import HubConfig

        return HubConfig().endpoint or DEFAULT_ENDPOINT
    except Exception:
        return DEFAULT_ENDPOINT


def network_ok(url: str, timeout: float = 3.0) -> bool:
    """True when a TCP connection to the site's host can be opened within ``timeout`` seconds."""
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname, parsed.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def collect_files(run_dir: str | os.PathLike, lora_file: str = "lora.safetensors") -> dict[str, Path]:
    """Files of a run folder to publish, by their path in the repository.

    The LoRA (required), its exports (``*.diffusers.safetensors``, ``*.comfyui.safetensors``),
    images under ``samples/`` and any loss plot (``loss*.png``) in the run folder.
    Checkpoints, caches and logs stay home.
    """
    run_dir = Path(run_dir)
    lora = run_dir / lora_file
    if not lora.is_file():
        raise FileNotFoundError(f"no {lora_file} in {run_dir}; train first (notebook 03) or pass lora_file=")
    files = {lora_file: lora}
    stem = Path(lora_file).stem
    for fmt in ("diffusers", "comfyui"):
        export = run_dir / f"{stem}.{fmt}.safetensors"
        if export.is_file():
            files[export.name] = export
    for image in sorted((run_dir / "samples").rglob("*")) if (run_dir / "samples").is_dir() else []:
        if image.suffix.lower() in IMAGE_SUFFIXES and image.is_file():
            files[image.relative_to(run_dir).as_posix()] = image
    for plot in sorted(run_dir.glob("loss*.png")):
        files[plot.name] = plot
    return files


def model_card(meta: dict, model_id: str, files: dict[str, Path], lora_file: str = "lora.safetensors") -> str:
    """The README.md text: front matter ModelScope reads, settings, trigger word, how to use, samples."""
    offline = meta.get("weights") == "offline-random"
    trigger = meta.get("trigger")
    settings = {k: meta.get(k) for k in ("base_model", "rank", "alpha", "target_modules", "steps", "resolution",
                                         "lr", "seed", "dataset_fingerprint", "weights") if k in meta}
    settings.update({k: v for k, v in meta.items() if k not in settings and k not in {"format", "key_layout"}})
    rows = "\n".join(f"| {k} | {', '.join(map(str, v)) if isinstance(v, list) else v} |" for k, v in settings.items())
    samples = [name for name in files if name.startswith("samples/")]
    plots = [name for name in files if name.startswith("loss")]
    exports = [name for name in files if name.endswith((".diffusers.safetensors", ".comfyui.safetensors"))]
    lines = [
        "---",
        "frameworks:",
        "- Pytorch",
        "license: apache-2.0",
        "tasks:",
        "- text-to-image-synthesis",
        "base_model:",
        f"- {meta.get('base_model', 'Kwai-Kolors/Kolors')}",
        "base_model_relation: adapter",
        "---",
        CARD_MARKER,
        "",
        f"# {model_id.split('/')[-1]}",
        "",
        f"A style LoRA for [{meta.get('base_model', 'Kolors')}](https://modelscope.cn/models/{meta.get('base_model', 'Kwai-Kolors/Kolors')}), "
        "trained with DiffSynth-Studio 1.1.9 using the Kolors LoRA story kit.",
        "",
    ]
    if offline:
        lines += ["> **Made with offline random weights (`weights: offline-random`)**: a test of the course "
                  "pipeline, not a usable LoRA. Its images mean nothing.", ""]
    lines += [
        "## Trigger word",
        "",
        f"Put `{trigger}` in your prompt." if trigger else "None: the style applies without a trigger word.",
        "",
        "## Settings",
        "",
        "| setting | value |",
        "|---|---|",
        rows,
        "",
        f"Rank and alpha are also stored in `{lora_file}`'s metadata; the LoRA strength is alpha / rank "
        f"= {float(meta['alpha']) / int(meta['rank']):g} times its weights.",
        "",
        "## Use it",
        "",
        "DiffSynth (with the kit):",
        "",
        "```python",
        "from helpers.lora import apply_lora",
        f"apply_lora(pipe, '{lora_file}', scale=1.0)  # rank and alpha come from the file",
        "```",
        "",
    ]
    if any(e.endswith(".diffusers.safetensors") for e in exports):
        name = next(e for e in exports if e.endswith(".diffusers.safetensors"))
        lines += ["diffusers (>= 0.34):", "", "```python",
                  f"pipe.load_lora_weights('.', weight_name='{name}')  # pipe = diffusers.KolorsPipeline", "```", ""]
    if any(e.endswith(".comfyui.safetensors") for e in exports):
        name = next(e for e in exports if e.endswith(".comfyui.safetensors"))
        lines += [f"ComfyUI: copy `{name}` into `models/loras/` and use a LoraLoader node on the Kolors model.", ""]
    if samples or plots:
        lines += ["## Samples", ""]
        lines += [f"![{name}]({name})" for name in samples + plots]
        lines.append("")
    return "\n".join(lines)


def _write_card(path: Path, text: str) -> Path:
    """Write the card; replace only a card this module wrote (never the user's own README)."""
    if path.exists() and CARD_MARKER not in path.read_text(encoding="utf-8", errors="replace"):
        raise FileExistsError(f"{path} exists and was not written by the kit; move it away or pass card_name=")
    return write_text(path, text, overwrite=True)


def upload_lora(run_dir: str | os.PathLike, model_id: str, token: str | None = None, dry_run: bool | None = None, *,
                lora_file: str = "lora.safetensors", card_name: str = "README.md", visibility: str = "private",
                commit_message: str | None = None) -> UploadPlan:
    """Upload a training run's LoRA, model card and samples to ModelScope model ``model_id`` ("owner/name").

    ``dry_run=None`` (default) uploads only when a token is found (``token``,
    ``$MODELSCOPE_API_TOKEN`` or ``modelscope login``) and the site is reachable; otherwise,
    or with ``dry_run=True``, nothing is sent. Either way the model card is written to
    ``run_dir/README.md`` and the returned :class:`UploadPlan` lists every file with its
    size (print it). The repository is created (``visibility``, private by default) if
    missing. Taught in ``notebooks/03_train_lora.ipynb``.
    """
    if model_id.count("/") != 1 or not all(model_id.split("/")):
        raise ValueError(f"model_id {model_id!r} should be 'owner/name', e.g. 'your-name/kolors-story-lora'")
    run_dir = Path(run_dir)
    meta = read_lora_metadata(run_dir / lora_file)
    files = collect_files(run_dir, lora_file)
    card = _write_card(run_dir / card_name, model_card(meta, model_id, files, lora_file))
    files = {"README.md": card, **files}
    site = endpoint()
    found = find_token(token)
    if dry_run:
        reason = "dry_run=True"
    elif not found:
        reason = f"no ModelScope token (set {TOKEN_ENV} or run `modelscope login`)"
    elif not network_ok(site):
        reason = f"cannot reach {site}"
    else:
        reason = "token found and site reachable"
    plan = UploadPlan(model_id=model_id, endpoint=site, run_dir=run_dir, files=files, model_card=card,
                      dry_run=bool(dry_run) or reason != "token found and site reachable", reason=reason)
    if meta.get("weights") == "offline-random":
        plan.notes.append("note: this LoRA was trained on offline random weights; its model card says so")
    if plan.dry_run:
        return plan

    from modelscope.hub.api import HubApi

    try:
        api = HubApi(token=found)
        if not api.repo_exists(model_id):
            api.create_repo(model_id, visibility=visibility, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="kit-upload-") as staging:
            for name, local in files.items():  # the repository layout, as links (copies across disks)
                target = Path(staging) / name
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(local, target)
                except OSError:
                    shutil.copy2(local, target)
            api.upload_folder(repo_id=model_id, folder_path=staging,
                              commit_message=commit_message or f"Upload LoRA ({meta.get('steps')} steps) from kolors-story-kit")
    except Exception as exc:  # the SDK's message must not leak the token
        message = str(exc).replace(found, "***") if found else str(exc)
        raise RuntimeError(f"upload to {site}/models/{model_id} failed: {type(exc).__name__}: {message}") from None
    plan.uploaded = True
    plan.reason = f"uploaded to {site}/models/{model_id}"
    return plan
