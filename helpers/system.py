"""Machine check for ``notebooks/00_setup.ipynb``: versions, device, memory, disk.

It reports; it does not change anything. The time estimates are figures measured on
the kit's own machines (see the README), not promises.
"""

from __future__ import annotations

import platform
import shutil
from importlib import metadata
from pathlib import Path

import psutil

PACKAGES = ["torch", "torchvision", "diffsynth", "transformers", "huggingface-hub", "diffusers", "peft",
            "lightning", "py-data-juicer", "datasets", "modelscope", "simple-aesthetics-predictor",
            "matplotlib", "papermill", "jupyterlab"]

GIB = 1024 ** 3


def package_versions(names: list[str] = PACKAGES) -> dict[str, str]:
    """Installed version of each package, or ``missing``."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "missing"
    return versions


def machine_report(models_root: Path, outputs_root: Path) -> dict:
    """Python, packages, accelerator, CPU, memory and free disk, as one dict."""
    import torch

    gpu = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu = {"name": props.name, "memory_gib": round(props.total_memory / GIB, 1)}
    memory = psutil.virtual_memory()

    def free(path: Path) -> float:
        path = Path(path)
        while not path.exists():
            path = path.parent
        return round(shutil.disk_usage(path).free / GIB, 1)

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
        "gpu": gpu,
        "cpu_cores": psutil.cpu_count(logical=True),
        "ram_total_gib": round(memory.total / GIB, 1),
        "ram_available_gib": round(memory.available / GIB, 1),
        "disk_free_gib": {"models": free(models_root), "outputs": free(outputs_root)},
    }


def problems(report: dict, offline: bool) -> list[str]:
    """Things that will stop or slow the course on this machine, in plain words."""
    found = []
    missing = [name for name, version in report["packages"].items() if version == "missing"]
    if missing:
        found.append(f"packages missing: {', '.join(missing)}; run `make install`")
    if report["ram_total_gib"] < 16:
        found.append(f"{report['ram_total_gib']} GiB of RAM: loading Kolors (even the offline set) needs about 13 GiB")
    need_disk = 8 if offline else 30
    if report["disk_free_gib"]["models"] < need_disk:
        found.append(f"{report['disk_free_gib']['models']} GiB free for models; about {need_disk} GiB needed")
    if report["gpu"] is None and not offline:
        found.append("real weights but no GPU: generating at 1024 px on a CPU takes many minutes per panel")
    if report["gpu"] and report["gpu"]["memory_gib"] < 16:
        found.append(f"GPU has {report['gpu']['memory_gib']} GiB; LoRA training at 1024 px needs about 16-24 GiB")
    return found


def course_plan(report: dict, offline: bool) -> list[dict]:
    """What each notebook will do here and roughly how long it takes (measured figures)."""
    gpu = report["gpu"] is not None
    if offline:
        note = "offline random weights: runs everything, results mean nothing"
        rows = [("00_setup", "resolve models (build the offline set once: ~1.5 min)", "2 min"),
                ("01_scoring", "score images with the (random) competition predictor", "1 min"),
                ("02_data", "fall back to the kit's own images, filter with Data-Juicer", "2 min"),
                ("03_train_lora", "a few LoRA steps at 128 px (CPU: ~3 s/step)", "5 min"),
                ("04_comic_strip", "8 panels at 128 px, base and LoRA, strip, scores, jury sheet, bundle", "5 min"),
                ("05_beyond_scoring", "other scorers, agreement, reward, service (small random models)", "2 min"),
                ("06_scale_out", "Data-Juicer on a local Ray head (2,000 tiny images)", "3 min"),
                ("07_experiments", "a small LoRA sweep: train, draw, judge each setting", "10 min")]
    elif gpu:
        note = "real weights on a GPU"
        rows = [("00_setup", "download Kolors (~20 GB) once", "10-30 min"),
                ("01_scoring", "score images with the competition predictor", "1 min"),
                ("02_data", "download and filter lowres_anime", "5 min"),
                ("03_train_lora", "LoRA training at 1024 px", "15-40 min"),
                ("04_comic_strip", "8 panels at 1024 px, 50 steps, base and LoRA", "3-5 min"),
                ("05_beyond_scoring", "V2.5, reward, VLM levels (downloads ~10 GB more)", "15 min"),
                ("06_scale_out", "Data-Juicer on a local Ray head", "3 min"),
                ("07_experiments", "a LoRA sweep: one training per setting", "1-3 h")]
    else:
        note = "real weights on a CPU: only the quick profile is practical"
        rows = [("all", "use `make course` (quick profile: small sizes, few steps)", "1 h or more")]
    return [{"notebook": n, "does": d, "about": t, "setting": note} for n, d, t in rows]
