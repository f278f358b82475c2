"""Scaling a Data-Juicer recipe out: the same recipe on one process or on a Ray cluster.

Data-Juicer already runs a recipe on Ray (``executor_type: ray``, ``ray_address``); this
module only does the chores around it, so that a notebook or a test can show the real
calls (``init_configs`` then ``RayExecutor(cfg).run()`` or ``DefaultExecutor(cfg).run()``):

- :func:`image_dataset` turns an image folder into the JSON-lines dataset Data-Juicer reads;
- :func:`load_recipe` fills a recipe's paths (data, export, scorer) for one run;
- :func:`run_recipe` runs it with either executor and returns what was kept, what was
  filtered and which images could not be read (reported, never fatal);
- :func:`local_ray_head` starts a Ray head on 127.0.0.1 (``ray start --head --block``)
  and always stops it again: a real cluster of one machine, for tests and the notebook;
- :func:`make_image_folder` writes a folder of tiny images, some of them corrupt.

Taught in ``notebooks/06_scale_out.ipynb``. Command line: ``python -m helpers.scale --help``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import yaml

from .io import check_writable, write_json, write_text
from .paths import data_dir, outputs_dir

RECIPE = data_dir() / "recipes" / "ray_aesthetic_prefilter.yaml"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
AESTHETIC_OP = "image_aesthetics_filter"
SHAPE_OP = "image_shape_filter"
# Ray keeps its sessions here (per head) so ours never mixes with anyone else's /tmp/ray.
RAY_TMP_PREFIX = "/tmp/rayk-"


# --------------------------------------------------------------------------- images


def make_image_folder(folder: str | os.PathLike, n_images: int = 2000, n_corrupt: int = 20,
                      min_side: int = 32, max_side: int = 96, seed: int = 0, progress: bool = True) -> dict:
    """Write ``n_images`` small images (random sizes and aspect ratios) plus ``n_corrupt`` bad files.

    The bad files are the kinds a scraped folder really has: a JPEG cut in half, random
    bytes named ``.jpg``, an empty ``.png``. Returns ``{"images": [...], "corrupt": [...]}``
    (file names). Refuses to write into a folder that already has files in it.
    """
    import numpy as np
    from PIL import Image
    from tqdm.auto import tqdm

    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} is not empty; pick a new folder for generated images")
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = []
    for i in tqdm(range(n_images), desc="images", disable=not progress):
        w, h = (int(v) for v in rng.integers(min_side, max_side + 1, size=2))
        base = rng.integers(0, 256, size=3)
        ramp = np.linspace(0, 1, w)[None, :, None] * rng.integers(-128, 128, size=3)
        noise = rng.normal(0, rng.uniform(2, 60), size=(h, w, 3))
        pixels = np.clip(base + ramp + noise, 0, 255).astype(np.uint8)
        name = f"img_{i:05d}." + ("jpg" if i % 3 else "png")
        Image.fromarray(pixels).save(folder / name)
        names.append(name)
    corrupt = []
    for j in range(n_corrupt):
        kind = j % 3
        if kind == 0:  # a JPEG cut short (a cut after the header still decodes: Data-Juicer loads truncated images)
            name = f"bad_{j:03d}_truncated.jpg"
            Image.fromarray(rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)).save(folder / name)
            data = (folder / name).read_bytes()
            (folder / name).write_bytes(data[:200])  # inside the header: unreadable
        elif kind == 1:  # not an image at all
            name = f"bad_{j:03d}_noise.jpg"
            (folder / name).write_bytes(rng.integers(0, 256, size=512, dtype=np.uint8).tobytes())
        else:  # empty
            name = f"bad_{j:03d}_empty.png"
            (folder / name).write_bytes(b"")
        corrupt.append(name)
    return {"images": names, "corrupt": corrupt}


def image_dataset(folder: str | os.PathLike, jsonl_path: str | os.PathLike, text: str = "",
                  overwrite: bool = False) -> int:
    """Write Data-Juicer's multimodal JSON lines for every image in ``folder``; returns the count.

    One line per file: ``{"id": <file name>, "images": [<absolute path>], "text": ...}``.
    Files are listed, not opened: reading them is the recipe's job (on the workers).
    Paths are absolute, so on a cluster the folder must be mounted at the same path on
    every node.
    """
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder of images")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    token = "<__dj__image>"
    lines = [json.dumps({"id": p.name, "images": [str(p)], "text": f"{token} {text}".strip()}, ensure_ascii=False)
             for p in files]
    write_text(jsonl_path, "\n".join(lines) + "\n", overwrite=overwrite)
    return len(files)


# --------------------------------------------------------------------------- recipe


def aesthetic_score_scale(model_path: str | os.PathLike) -> float:
    """What Data-Juicer divides the predictor's score by for this model path: 10.0 or 1.0.

    Asked of Data-Juicer's own ``image_aesthetics_filter`` (1.6 divides by 10 when the
    name contains ``aesthetics-predictor``), so a recipe's ``min_score`` can be checked.
    """
    from data_juicer.ops.filter.image_aesthetics_filter import ImageAestheticsFilter

    op = ImageAestheticsFilter(hf_scorer_model=str(model_path))
    return 10.0 if op.need_normalized_by_ten else 1.0


def load_recipe(recipe: str | os.PathLike = RECIPE, *, scorer_path: str | os.PathLike | None = None,
                op_args: dict[str, dict] | None = None, **settings) -> dict:
    """Read a recipe YAML and return it with this run's values filled in.

    ``scorer_path`` replaces the aesthetic filter's ``hf_scorer_model`` (default: the kit's
    resolved predictor, ``helpers.models.resolve_models(("aesthetic",)).aesthetic``);
    ``op_args`` updates operator arguments by op name (``{"image_shape_filter": {"min_width": 48}}``);
    other keyword arguments set top-level keys (``dataset_path``, ``export_path``, ``ray_address``...).
    Raises ``ValueError`` when the scorer's score scale does not fit ``min_score``/``max_score``.
    """
    cfg = yaml.safe_load(Path(recipe).read_text(encoding="utf-8"))
    ops = {name: args for op in cfg["process"] for name, args in op.items()}
    for name, args in (op_args or {}).items():
        if name not in ops:
            raise ValueError(f"recipe {Path(recipe).name} has no operator {name!r}; it has {sorted(ops)}")
        ops[name].update(args)
    if AESTHETIC_OP in ops:
        if scorer_path is None:
            from .models import resolve_models

            scorer_path = resolve_models(("aesthetic",), verbose=False).aesthetic
        ops[AESTHETIC_OP]["hf_scorer_model"] = str(scorer_path)
        scale = aesthetic_score_scale(scorer_path)
        top = ops[AESTHETIC_OP].get("max_score", 1.0)
        if scale == 10.0 and top > 1.0:
            raise ValueError(f"{scorer_path} is scored on 0-1 by Data-Juicer (divided by 10) but max_score={top}; "
                             "write thresholds as score/10 (6.0 -> 0.6)")
        if scale == 1.0 and top <= 1.0:
            raise ValueError(f"{scorer_path} is scored on the raw 1-10 scale by Data-Juicer (its path does not contain "
                             "'aesthetics-predictor') but max_score={top}; use 1-10 thresholds or rename the folder")
    cfg.update({k: (str(v) if isinstance(v, Path) else v) for k, v in settings.items()})
    return cfg


# --------------------------------------------------------------------------- running


@dataclass
class RecipeRun:
    """What one run of a recipe did (returned by :func:`run_recipe`)."""

    executor: str
    n_input: int
    kept: list[str]  # ids, sorted
    corrupt: list[str]  # ids of files that could not be read
    filtered: list[str]  # ids read fine and dropped by a filter
    seconds: float
    kept_rows: list[dict] = field(repr=False, default_factory=list)
    decoded_stats: dict[str, dict] = field(repr=False, default_factory=dict)  # id -> first filter's stats
    work_dir: Path | None = None
    weights: str = ""

    @property
    def images_per_s(self) -> float:
        return self.n_input / self.seconds if self.seconds else float("nan")

    def summary(self) -> dict:
        return {"executor": self.executor, "weights": self.weights, "n_input": self.n_input,
                "n_kept": len(self.kept), "n_filtered": len(self.filtered), "n_corrupt": len(self.corrupt),
                "corrupt": self.corrupt, "seconds": round(self.seconds, 2),
                "images_per_s": round(self.images_per_s, 1)}


def read_rows(path: str | os.PathLike) -> list[dict]:
    """JSON lines from a file, or from every ``*.json*`` part in a folder (Ray writes folders)."""
    path = Path(path)
    if not path.exists():
        return []
    files = sorted(p for p in path.rglob("*.json*") if p.is_file()) if path.is_dir() else [path]
    rows = []
    for f in files:
        rows += [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    return rows


def run_recipe(cfg: dict, work_dir: str | os.PathLike, executor: str | None = None,
               ray_address: str | None = None, np: int | None = None) -> RecipeRun:
    """Run a filled-in recipe (:func:`load_recipe`) with Data-Juicer and account for every image.

    ``executor`` ("default" or "ray") and ``ray_address`` override the recipe's. Writes the
    recipe as run, the kept rows and a ``report.json`` under ``work_dir`` (which must not
    exist yet). Corrupt images do not stop the run: Data-Juicer drops them
    (``skip_op_error``) and they are reported here, found as the input ids missing from
    the first filter's stats (every decodable image has a width there).
    """
    from data_juicer.config import init_configs
    from data_juicer.core.executor import ExecutorFactory

    work_dir = check_writable(work_dir).resolve()
    work_dir.mkdir(parents=True)
    cfg = json.loads(json.dumps(cfg))  # a copy
    cfg["executor_type"] = executor or cfg.get("executor_type", "default")
    if ray_address:
        cfg["ray_address"] = ray_address
    if np:
        cfg["np"] = np
    is_ray = cfg["executor_type"] == "ray"
    cfg["export_path"] = str(work_dir / ("kept" if is_ray else "kept.jsonl"))
    cfg["work_dir"] = str(work_dir / "dj")
    first = cfg["process"][0]
    first_name = next(iter(first))
    stats_path = work_dir / ("decoded" if is_ray else "decoded.jsonl")
    first[first_name]["stats_export_path"] = str(stats_path)
    recipe_path = work_dir / "recipe.yaml"
    write_text(recipe_path, yaml.safe_dump(cfg, allow_unicode=True, sort_keys=False))

    ids = [row["id"] for row in read_rows(cfg["dataset_path"])]
    dj_cfg = init_configs(args=["--config", str(recipe_path)])
    start = time.perf_counter()
    ExecutorFactory.create_executor(cfg["executor_type"])(dj_cfg).run()
    seconds = time.perf_counter() - start

    kept_rows = read_rows(cfg["export_path"])
    kept = sorted(r["id"] for r in kept_rows)
    decoded_stats = {r["id"]: r.get("__dj__stats__", {}) for r in read_rows(stats_path)}
    decoded = set(decoded_stats)
    corrupt = sorted(set(ids) - decoded)
    filtered = sorted(decoded - set(kept))
    weights = _weights_label(cfg)
    result = RecipeRun(cfg["executor_type"], len(ids), kept, corrupt, filtered, seconds, kept_rows,
                       decoded_stats, work_dir, weights)
    write_json(work_dir / "report.json", {**result.summary(), "recipe": str(recipe_path)})
    return result


def _weights_label(cfg: dict) -> str:
    """``offline-random`` when the recipe's scorer is the kit's offline build, else ``real``."""
    from .offline import marker_path

    for op in cfg["process"]:
        args = op.get(AESTHETIC_OP)
        if args:
            return "offline-random" if marker_path(Path(args["hf_scorer_model"])).exists() else "real"
    return "no model"


# --------------------------------------------------------------------------- a local Ray head


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Loopback only. On Linux, Ray replaces a node address of 127.0.0.1 with the machine's
# network address and listens on every interface; with this variable at 0 it keeps to
# 127.0.0.1, as it does on a laptop (its single-machine mode for macOS and Windows).
LOCAL_RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
                 "RAY_DISABLE_DOCKER_CPU_WARNING": "1"}


def ray_env() -> dict:
    """Environment for a local head's processes: loopback only, no usage statistics."""
    return {**os.environ, **LOCAL_RAY_ENV}


@contextlib.contextmanager
def _local_ray_driver_env() -> Iterator[None]:
    """The same setting in this process (the driver that connects), restored afterwards.

    Ray reads the variable when it is first imported, so if it already was (a notebook
    kernel), the value it read is switched for the duration too.
    """
    from ray._private import ray_constants

    saved = {k: os.environ.get(k) for k in LOCAL_RAY_ENV}
    saved_flag = ray_constants.ENABLE_RAY_CLUSTER
    os.environ.update(LOCAL_RAY_ENV)
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def local_ray_head(num_cpus: int = 2, object_store_mb: int = 512, timeout: float = 120.0,
                   attempts: int = 3) -> Iterator[str]:
    """Start a Ray head on 127.0.0.1 and yield its address (``127.0.0.1:PORT``); always stop it.

    It runs ``ray start --head --block --node-ip-address 127.0.0.1`` as a child process
    (its own session folder, every port on loopback, no dashboard, no usage statistics, a
    small object store) and
    on exit, error or not, stops exactly that process and what it started. This is the
    command you run on a real head node, minus ``--block``; see notebooks/06_scale_out.ipynb.
    On a busy machine Ray's own 30 s start-up limit can be missed: it tries ``attempts`` times.
    """
    with _local_ray_driver_env():
        yield from _local_ray_head(num_cpus, object_store_mb, timeout, attempts)


def _local_ray_head(num_cpus: int, object_store_mb: int, timeout: float, attempts: int) -> Iterator[str]:
    errors = []
    for _ in range(attempts):
        proc, address, log_path = _start_head(num_cpus, object_store_mb)
        try:
            _wait_for_head(address, proc, timeout, log_path)
        except (RuntimeError, TimeoutError) as exc:
            _stop_head(proc, log_path.parent)
            errors.append(str(exc))
            continue
        try:
            yield address
        finally:
            _stop_head(proc, log_path.parent)
        return
    raise RuntimeError(f"could not start a local Ray head in {attempts} attempts; last error:\n{errors[-1]}")


def _start_head(num_cpus: int, object_store_mb: int) -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix=RAY_TMP_PREFIX)
    ray_bin = Path(sys.executable).with_name("ray")
    cmd = [str(ray_bin) if ray_bin.exists() else "ray", "start", "--head", "--block",
           "--node-ip-address", "127.0.0.1", "--port", str(port),
           "--num-cpus", str(num_cpus), "--num-gpus", "0",
           "--object-store-memory", str(object_store_mb * 1024 * 1024),
           "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", temp_dir]
    log_path = Path(temp_dir) / "ray_start.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=ray_env(), start_new_session=True)
    return proc, f"127.0.0.1:{port}", log_path


def _wait_for_head(address: str, proc: subprocess.Popen, timeout: float, log_path: Path) -> None:
    host, port = address.split(":")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"`ray start --head` exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        if "--block" in log_path.read_text(errors="replace"):  # printed once every process is up
            with contextlib.suppress(OSError), socket.create_connection((host, int(port)), timeout=1):
                return
        time.sleep(0.5)
    raise TimeoutError(f"Ray head at {address} not up after {timeout:.0f} s; log: {log_path}")


def _stop_head(proc: subprocess.Popen, temp_dir: Path | None = None, grace: float = 30.0) -> None:
    """Stop the ``ray start --block`` we started: SIGTERM (it then stops its Ray processes), then SIGKILL."""
    with contextlib.suppress(Exception):
        import ray

        if ray.is_initialized():
            ray.shutdown()
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: only what it started
            proc.wait(10)
    with contextlib.suppress(ProcessLookupError):  # stragglers of that group (workers), by group id
        os.killpg(proc.pid, signal.SIGKILL)
    if temp_dir is not None:
        shutil.rmtree(temp_dir, ignore_errors=True)


# --------------------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m helpers.scale", description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=Path, required=True, help="folder of images to filter")
    parser.add_argument("--recipe", type=Path, default=RECIPE, help="Data-Juicer recipe (default: %(default)s)")
    parser.add_argument("--executor", choices=["default", "ray"], default="ray",
                        help="Data-Juicer executor: one machine (default) or a Ray cluster (ray)")
    parser.add_argument("--ray-address", default=None,
                        help="Ray cluster address (HEAD_IP:6379 or auto); 'local-head' starts one on 127.0.0.1")
    parser.add_argument("--np", type=int, default=None, help="processes for the default executor")
    parser.add_argument("--min-score", type=float, default=None,
                        help="aesthetic threshold on the competition's 1-10 scale (converted to the recipe's scale)")
    parser.add_argument("--out", type=Path, default=None,
                        help="run folder, must not exist (default: outputs/scale/run-<time>)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from .models import resolve_models

    models = resolve_models(("aesthetic",))
    out = (args.out or outputs_dir() / "scale" / time.strftime("run-%Y%m%d-%H%M%S")).resolve()
    check_writable(out)
    out.mkdir(parents=True)
    n = image_dataset(args.images, out / "dataset.jsonl")
    op_args = {}
    if args.min_score is not None:
        op_args[AESTHETIC_OP] = {"min_score": args.min_score / aesthetic_score_scale(models.aesthetic)}
    cfg = load_recipe(args.recipe, scorer_path=models.aesthetic, op_args=op_args,
                      dataset_path=str(out / "dataset.jsonl"))
    print(f"scale: {n} images, executor {args.executor}, recipe {args.recipe}, weights: {models.weights}", flush=True)
    if args.executor == "ray" and args.ray_address == "local-head":
        with local_ray_head() as address:
            run = run_recipe(cfg, out / "run", executor="ray", ray_address=address, np=args.np)
    else:
        run = run_recipe(cfg, out / "run", executor=args.executor, ray_address=args.ray_address, np=args.np)
    summary = run.summary()
    for key in ("executor", "weights", "n_input", "n_kept", "n_filtered", "n_corrupt", "seconds", "images_per_s"):
        print(f"  {key:13s} {summary[key]}")
    for name in run.corrupt:
        print(f"  unreadable: {name}")
    print(f"report: {run.work_dir / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
