"""Training images: fetch them, caption them, check them, and write the folder DiffSynth reads.

Three steps, each writing plain files you can open:

1. :func:`fetch_dataset` puts a source's images in ``<dest>/images/`` and writes
   ``<dest>/metadata.jsonl`` in Data-Juicer's input format (``{"id", "text", "image": [path]}``).
   The source is the baseline's ModelScope set ``AI-ModelScope/lowres_anime`` or, offline,
   the kit's own small set (public-domain/CC0 photographs bundled with scikit-image, plus
   generated pictures of many sizes and shapes, plus deliberately broken files). Broken
   images are reported in ``rejected.json`` and left out, never fatal.
2. Captions: a ``.txt`` beside the image wins, then the data set's own text field, then a
   template with a trigger word (:func:`caption_for`).
3. :func:`write_training_folder` writes ``<outputs>/data/lora_dataset/train/`` (images +
   ``metadata.csv`` with ``file_name,text``), the layout of DiffSynth's ``TextImageDataset``,
   atomically and idempotently; optionally resized and cropped to training buckets.

Filtering in between is Data-Juicer's job (``helpers/dj.py``). Taught in ``notebooks/02_data.ipynb``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from .io import OutputExistsError, write_json, write_text

MODELSCOPE_DATASET = "AI-ModelScope/lowres_anime"
SOURCES = ("auto", "modelscope", "offline")
DEFAULT_TEMPLATE = "{trigger}{subject}，{orientation}"
ANIME_SUBJECT = "二次元动漫风格插画"  # the baseline's one caption ("二次元"), kept as the subject

# scikit-image's bundled sample photographs that carry a free licence (see skimage.data docs).
# file -> (Chinese caption, licence)
OFFLINE_PHOTOS: dict[str, tuple[str, str]] = {
    "astronaut.png": ("宇航员艾琳·柯林斯的肖像，身穿橙色宇航服，背景是美国国旗", "public domain (NASA)"),
    "camera.png": ("黑白照片，一个男人在草地上操作三脚架上的相机", "CC0 (Lav Varshney)"),
    "chelsea.png": ("一只橘色虎斑猫的特写，眼睛看向一侧", "CC0 (Stefan van der Walt)"),
    "coffee.png": ("一杯放在红色碟子上的咖啡，俯视角度", "CC0 (Rachel Michetti)"),
    "rocket.jpg": ("猎鹰九号火箭在发射台上升空，白色烟雾和蓝天", "public domain (SpaceX)"),
    "hubble_deep_field.jpg": ("哈勃深空照片，黑色太空中布满星系", "public domain (NASA)"),
    "retina.jpg": ("人眼视网膜的医学照片，红橙色背景上的血管", "CC0 (Mikael Häggström)"),
    "coins.png": ("黑白照片，许多古老的硬币排列在一起", "no known copyright restrictions"),
    "clock_motion.png": ("黑白照片，墙上的时钟，带运动模糊", "public domain (Stefan van der Walt)"),
    "horse.png": ("一匹奔跑的马的黑色剪影", "CC0 (Andreas Preuss)"),
    "brick.png": ("黑白照片，砖墙的纹理", "CC0 (CC0Textures)"),
    "grass.png": ("黑白照片，草地的纹理", "CC0 (CC0Textures)"),
}

# Generated pictures: (width, height) chosen so every filter has something to keep and drop.
GENERATED_SIZES: tuple[tuple[int, int], ...] = (
    (1024, 1024), (1280, 1024), (1024, 1344), (1536, 1152),   # big enough for the baseline
    (2400, 1000), (1100, 2600),                               # big but too wide / too tall
    (768, 768), (640, 896), (896, 640), (720, 512),           # the "lowres" middle: keep-more material
    (320, 320), (256, 384), (400, 240), (1024, 400),          # too small, or too small and too wide
)
_SHAPES = {"circle": "圆形", "square": "方块", "triangle": "三角形", "stripes": "条纹"}
_COLOURS = {"red": ((220, 50, 50), "红色"), "blue": ((40, 90, 210), "蓝色"), "green": ((40, 170, 90), "绿色"),
            "yellow": ((240, 200, 40), "黄色"), "purple": ((140, 60, 180), "紫色"), "orange": ((245, 130, 30), "橙色")}


class DatasetUnavailable(RuntimeError):
    """The requested source could not be fetched (no network, no ModelScope access, ...)."""


@dataclass
class FetchReport:
    """What :func:`fetch_dataset` wrote: where, from which source, what was left out and why."""

    source: str
    folder: Path
    metadata: Path
    records: list[dict]
    rejected: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"source: {self.source}", f"images: {len(self.records)} in {self.folder / 'images'}",
                 f"metadata: {self.metadata}", f"rejected: {len(self.rejected)}"]
        lines += [f"  - {r['file']}: {r['error']}" for r in self.rejected]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def orientation(width: int, height: int) -> str:
    """A Chinese word for the picture's shape: 横版 (landscape), 竖版 (portrait) or 方形 (square)."""
    ratio = width / height
    return "横版构图" if ratio > 1.1 else "竖版构图" if ratio < 1 / 1.1 else "方形构图"


def caption_for(image_path: str | os.PathLike, dataset_text: str | None = None, *, trigger: str = "",
                template: str = DEFAULT_TEMPLATE, subject: str = ANIME_SUBJECT,
                size: tuple[int, int] | None = None) -> str:
    """The caption of one image: a ``.txt`` beside it, else ``dataset_text``, else ``template``.

    ``template`` may use ``{trigger}``, ``{subject}`` and ``{orientation}``; a non-empty trigger
    word gets a Chinese comma after it. Kolors reads Chinese best, so the defaults are Chinese.
    Taught in ``notebooks/02_data.ipynb``.
    """
    sidecar = Path(image_path).with_suffix(".txt")
    if sidecar.is_file():
        text = sidecar.read_text(encoding="utf-8").strip()
        if text:
            return text
    if dataset_text and dataset_text.strip():
        return dataset_text.strip()
    if size is None:
        with Image.open(image_path) as im:
            size = im.size
    return template.format(trigger=f"{trigger}，" if trigger else "", subject=subject,
                           orientation=orientation(*size))


def check_image(path: str | os.PathLike) -> str | None:
    """``None`` when ``path`` decodes as an image, else the reason it does not (never raises)."""
    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:  # verify() does not decode pixels; a truncated file fails here
            im.load()
            if im.width < 1 or im.height < 1:
                return "image has no pixels"
    except Exception as exc:  # PIL raises many kinds; all mean "not usable"
        return f"{type(exc).__name__}: {exc}"
    return None


def _skimage_data_dir() -> Path:
    try:
        import skimage.data
    except ImportError as exc:
        raise DatasetUnavailable("the offline set needs scikit-image (pip install scikit-image)") from exc
    return Path(skimage.data.__file__).parent


def _draw_generated(width: int, height: int, rng: random.Random) -> tuple[Image.Image, str]:
    """A flat-colour 'poster': background, a few shapes; returns the picture and its caption subject."""
    bg_name, fg_name = rng.sample(list(_COLOURS), 2)
    shape = rng.choice(list(_SHAPES))
    image = Image.new("RGB", (width, height), _COLOURS[bg_name][0])
    draw = ImageDraw.Draw(image)
    fg = _COLOURS[fg_name][0]
    side = min(width, height)
    for _ in range(rng.randint(1, 4)):
        r = rng.randint(side // 10, side // 4)
        x, y = rng.randint(r, width - r), rng.randint(r, height - r)
        if shape == "circle":
            draw.ellipse((x - r, y - r, x + r, y + r), fill=fg, outline=(20, 20, 20), width=max(2, side // 100))
        elif shape == "square":
            draw.rectangle((x - r, y - r, x + r, y + r), fill=fg, outline=(20, 20, 20), width=max(2, side // 100))
        elif shape == "triangle":
            draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=fg, outline=(20, 20, 20))
        else:
            for k in range(0, width, max(8, side // 12)):
                draw.line((k, 0, k - height // 2, height), fill=fg, width=max(3, side // 40))
            break
    subject = f"{_COLOURS[bg_name][1]}背景上的{_COLOURS[fg_name][1]}{_SHAPES[shape]}，扁平风格的几何插画"
    return image, subject


def _broken_files(images: Path, sample: Path) -> dict[str, str]:
    """Three kinds of broken file a real download produces: truncated, empty, and not an image."""
    data = sample.read_bytes()
    (images / "broken_truncated.jpg").write_bytes(data[: len(data) // 3])
    (images / "broken_empty.jpg").write_bytes(b"")
    (images / "broken_html.png").write_text("<html><body>404 Not Found</body></html>\n", encoding="utf-8")
    return {"broken_truncated.jpg": "a download cut off", "broken_empty.jpg": "an empty file",
            "broken_html.png": "an error page saved as .png"}


def build_offline_set(images: Path, *, n_generated: int | None = None, photos: Sequence[str] | None = None,
                      broken: bool = True, seed: int = 0) -> dict[str, dict]:
    """Write the kit's own image set into ``images/``; returns ``{file name: info}``.

    Photographs come from scikit-image's bundled samples (free licences, listed in
    :data:`OFFLINE_PHOTOS`); generated pictures cover the sizes in :data:`GENERATED_SIZES`
    (all of them, or the first ``n_generated``); ``broken`` adds three unreadable files.
    Taught in ``notebooks/02_data.ipynb``.
    """
    images.mkdir(parents=True, exist_ok=True)
    src_dir = _skimage_data_dir()
    info: dict[str, dict] = {}
    for name in photos if photos is not None else OFFLINE_PHOTOS:
        caption, licence = OFFLINE_PHOTOS[name]
        with Image.open(src_dir / name) as im:
            rgb = im.convert("RGB")
        out = images / f"photo_{Path(name).stem}.jpg"
        rgb.save(out, quality=92)
        info[out.name] = {"subject": caption, "origin": f"scikit-image {name}", "licence": licence}
    rng = random.Random(seed)
    sizes = GENERATED_SIZES if n_generated is None else GENERATED_SIZES[:n_generated]
    for k, (w, h) in enumerate(sizes):
        picture, subject = _draw_generated(w, h, rng)
        out = images / f"gen_{k:02d}_{w}x{h}.jpg"
        picture.save(out, quality=90)
        info[out.name] = {"subject": subject, "origin": "generated by the kit", "licence": "CC0"}
    if broken:
        sample = next(images.glob("*.jpg"))
        for name, why in _broken_files(images, sample).items():
            info[name] = {"subject": "", "origin": f"deliberately broken: {why}", "licence": "CC0"}
    return info


def _fetch_modelscope(images: Path, max_images: int | None, cache_dir: Path) -> dict[str, dict]:
    """Download the baseline's data set with ModelScope's ``MsDataset`` and save each item as RGB JPEG."""
    from modelscope.msdatasets import MsDataset

    ds = MsDataset.load(MODELSCOPE_DATASET, subset_name="default", split="train", cache_dir=str(cache_dir))
    images.mkdir(parents=True, exist_ok=True)
    total = len(ds) if max_images is None else min(len(ds), max_images)
    info: dict[str, dict] = {}
    for k in tqdm(range(total), desc="saving images", unit="img"):
        item = ds[k]
        out = images / f"{k:05d}.jpg"
        try:
            item["image"].convert("RGB").save(out, quality=95)
        except Exception as exc:  # a bad item is reported, the rest goes on
            info[out.name] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        text = next((item[key] for key in ("text", "caption", "prompt") if isinstance(item.get(key), str)), None)
        info[out.name] = {"text": text, "origin": f"{MODELSCOPE_DATASET}[{k}]", "licence": "see the data set card"}
    return info


def resolve_source(source: str = "auto") -> tuple[str, str]:
    """Which source ``source`` means here, and why: ``("modelscope" | "offline", reason)``.

    ``auto`` is offline when ``KOLORS_KIT_WEIGHTS=offline`` or ``MODELSCOPE_OFFLINE``/``HF_HUB_OFFLINE``
    is set (no network is tried), else ModelScope with a loud fallback if it fails.
    """
    if source not in SOURCES:
        raise ValueError(f"source={source!r}: choose one of {SOURCES}")
    if source != "auto":
        return source, f"source={source!r} was asked for"
    for var, off in (("KOLORS_KIT_WEIGHTS", {"offline", "offline-random", "random"}),
                     ("MODELSCOPE_OFFLINE", {"1", "true"}), ("HF_HUB_OFFLINE", {"1", "true"})):
        if os.environ.get(var, "").strip().lower() in off:
            return "offline", f"{var}={os.environ[var]} (offline mode: no download is tried)"
    return "modelscope", "auto: trying ModelScope first"


def _loud(message: str) -> str:
    bar = "!" * 78
    return "\n".join([bar, *("!! " + line for line in message.splitlines()), bar])


def fetch_dataset(dest: str | os.PathLike, source: str = "auto", *, max_images: int | None = None,
                  trigger: str = "", template: str = DEFAULT_TEMPLATE, n_generated: int | None = None,
                  offline_photos: Sequence[str] | None = None, seed: int = 0,
                  overwrite: bool = False, verbose: bool = True) -> FetchReport:
    """Fetch a source into ``dest/images/`` and write ``dest/metadata.jsonl`` for Data-Juicer.

    ``source``: ``"modelscope"`` (the baseline's ``AI-ModelScope/lowres_anime``; raises
    :class:`DatasetUnavailable` with what to do if it cannot), ``"offline"`` (the kit's own
    set, :func:`build_offline_set`) or ``"auto"`` (see :func:`resolve_source`; a failed
    download falls back to offline with a loud notice). Every image is checked; broken ones
    go to ``dest/rejected.json`` and not to the metadata. ``dest`` is rebuilt only when
    ``overwrite`` is true or it does not exist yet.

    Taught in ``notebooks/02_data.ipynb``.
    """
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        if not overwrite:
            raise OutputExistsError(f"{dest} already holds a fetched data set; pass overwrite=True to fetch again")
        shutil.rmtree(dest)
    images = dest / "images"
    chosen, reason = resolve_source(source)
    notes = [reason]
    info: dict[str, dict] = {}
    if chosen == "modelscope":
        try:
            info = _fetch_modelscope(images, max_images, dest / "modelscope_cache")
        except Exception as exc:
            shutil.rmtree(images, ignore_errors=True)
            why = f"{type(exc).__name__}: {exc}"
            if source == "modelscope":
                raise DatasetUnavailable(
                    f"could not load {MODELSCOPE_DATASET} from ModelScope ({why}). Check the network "
                    "(and MODELSCOPE_API_TOKEN if the data set needs a login), or use source='offline'."
                ) from exc
            message = (f"ModelScope download of {MODELSCOPE_DATASET} failed:\n{why[:300]}\n"
                       "FALLING BACK to the kit's own offline image set (small, not anime).")
            print(_loud(message), flush=True)
            notes.append(message.replace("\n", " "))
            chosen = "offline"
    if chosen == "offline":
        if verbose and source != "offline":
            print(_loud(f"Using the kit's OFFLINE image set, not {MODELSCOPE_DATASET}.\n{reason}"), flush=True)
        info = build_offline_set(images, n_generated=n_generated, photos=offline_photos, seed=seed)
        if max_images is not None:
            info = dict(list(info.items())[:max_images])

    records, rejected = [], []
    for name, meta in tqdm(sorted(info.items()), desc="checking images", unit="img", disable=not verbose):
        path = (images / name).resolve()
        error = meta.get("error") or check_image(path)
        if error:
            rejected.append({"file": name, "error": error, "origin": meta.get("origin", "")})
            continue
        with Image.open(path) as im:
            size = im.size
        text = caption_for(path, meta.get("text"), trigger=trigger, template=template,
                           subject=meta.get("subject") or ANIME_SUBJECT, size=size)
        records.append({"id": path.stem, "text": text, "image": [str(path)], "width": size[0], "height": size[1],
                        "origin": meta.get("origin", ""), "licence": meta.get("licence", "")})
    metadata = dest / "metadata.jsonl"
    write_text(metadata, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), overwrite=True)
    write_json(dest / "rejected.json", rejected, overwrite=True)
    report = FetchReport(source=chosen, folder=dest, metadata=metadata, records=records, rejected=rejected, notes=notes)
    if verbose:
        print(report, flush=True)
    return report


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The records of a JSON-lines file (Data-Juicer's input and output format)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# SDXL's training buckets (about one megapixel each), width x height.
SDXL_BUCKETS: tuple[tuple[int, int], ...] = (
    (1024, 1024), (1152, 896), (896, 1152), (1216, 832), (832, 1216), (1344, 768), (768, 1344),
)


def nearest_bucket(width: int, height: int, buckets: Iterable[Sequence[int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest to ``width / height`` (in log space)."""
    import math

    ratio = math.log(width / height)
    return tuple(min(buckets, key=lambda b: abs(math.log(b[0] / b[1]) - ratio)))  # type: ignore[return-value]


def fit_to_bucket(image: Image.Image, bucket: Sequence[int]) -> Image.Image:
    """Resize ``image`` to cover ``bucket`` (keeping its aspect ratio), then crop the centre."""
    bw, bh = bucket
    scale = max(bw / image.width, bh / image.height)
    w, h = max(bw, round(image.width * scale)), max(bh, round(image.height * scale))
    resized = image.convert("RGB").resize((w, h), Image.Resampling.LANCZOS)
    left, top = (w - bw) // 2, (h - bh) // 2
    return resized.crop((left, top, left + bw, top + bh))


@dataclass
class TrainingFolder:
    """The written training folder and what happened: ``written`` or ``unchanged``."""

    root: Path
    train: Path
    metadata: Path
    count: int
    status: str
    fingerprint: str


def _fingerprint(records: Sequence[dict], buckets) -> str:
    h = hashlib.sha256(json.dumps({"buckets": buckets}, sort_keys=True).encode())
    for r in records:
        path = Path(r["image"][0])
        h.update(path.name.encode() + b"\0" + r["text"].encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:16]


def write_training_folder(records: Sequence[dict], root: str | os.PathLike, *,
                          buckets: Sequence[Sequence[int]] | None = None, extra: dict | None = None,
                          overwrite: bool = False, verbose: bool = True) -> TrainingFolder:
    """Write ``root/train/`` (images + ``metadata.csv`` with ``file_name,text``) from kept records.

    ``records`` are Data-Juicer's kept samples (``{"text", "image": [path], ...}``). With
    ``buckets`` each image is resized and centre-cropped to its nearest bucket
    (:func:`fit_to_bucket`); without, images are copied as JPEG. The folder is built beside
    ``root`` and swapped in at the end, so a crash never leaves half a data set. Re-running
    with the same records is a no-op (``status="unchanged"``, by fingerprint in
    ``root/manifest.json``); different records replace it only with ``overwrite=True``.

    This is DiffSynth's ``TextImageDataset`` layout (``--dataset_path root``). Taught in
    ``notebooks/02_data.ipynb``.
    """
    if not records:
        raise ValueError("no images were kept, so there is nothing to train on; loosen the recipe's thresholds")
    root = Path(root)
    buckets_list = [list(b) for b in buckets] if buckets else None
    fingerprint = _fingerprint(records, buckets_list)
    manifest_path = root / "manifest.json"
    if manifest_path.exists():
        try:
            old = json.loads(manifest_path.read_text(encoding="utf-8"))
        except ValueError:
            old = {}
        if old.get("fingerprint") == fingerprint and (root / "train" / "metadata.csv").exists():
            if verbose:
                print(f"{root}: unchanged ({old.get('count')} images, fingerprint {fingerprint})")
            return TrainingFolder(root, root / "train", root / "train" / "metadata.csv", old.get("count", 0),
                                  "unchanged", fingerprint)
    if root.exists() and not overwrite:
        raise OutputExistsError(f"{root} holds a different training set; pass overwrite=True to replace it")

    building = root.with_name(root.name + ".building")
    shutil.rmtree(building, ignore_errors=True)
    train = building / "train"
    train.mkdir(parents=True)
    rows, used = [], set()
    for r in tqdm(records, desc="writing training images", unit="img", disable=not verbose):
        src = Path(r["image"][0])
        name = f"{src.stem}.jpg"
        if name in used:
            raise ValueError(f"two kept images are both called {name}; give them distinct file names")
        used.add(name)
        with Image.open(src) as im:
            picture = im.convert("RGB")
        if buckets_list:
            picture = fit_to_bucket(picture, nearest_bucket(picture.width, picture.height, buckets_list))
        picture.save(train / name, quality=95)
        rows.append((name, r["text"]))
    with open(train / "metadata.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file_name", "text"])
        writer.writerows(rows)
    manifest = {"fingerprint": fingerprint, "count": len(rows), "buckets": buckets_list,
                "layout": "DiffSynth TextImageDataset: train/metadata.csv (file_name,text) + images", **(extra or {})}
    (building / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=2), encoding="utf-8")
    old_dir = root.with_name(root.name + ".old")
    shutil.rmtree(old_dir, ignore_errors=True)
    if root.exists():
        root.rename(old_dir)
    building.rename(root)
    shutil.rmtree(old_dir, ignore_errors=True)
    if verbose:
        print(f"wrote {len(rows)} images + metadata.csv to {root / 'train'}")
    return TrainingFolder(root, root / "train", root / "train" / "metadata.csv", len(rows), "written", fingerprint)
