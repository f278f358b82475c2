"""Training data (notebook 02): fetch fallback, captions, broken images, Data-Juicer recipes, the training folder."""

import csv
import shutil

import pytest
from PIL import Image

from helpers import dataset as ds
from helpers.io import OutputExistsError

PHOTOS = ["chelsea.png", "coffee.png", "retina.jpg"]


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    """The offline set, small: 3 photos, 10 generated sizes, 3 broken files."""
    return ds.fetch_dataset(tmp_path_factory.mktemp("data") / "source", source="offline",
                            n_generated=10, offline_photos=PHOTOS, verbose=False)


def test_auto_is_offline_without_touching_the_network(monkeypatch, tmp_path):
    monkeypatch.setenv("KOLORS_KIT_WEIGHTS", "offline")
    monkeypatch.setattr(ds, "_fetch_modelscope", lambda *a, **k: pytest.fail("auto must not try ModelScope offline"))
    assert ds.resolve_source("auto")[0] == "offline"
    report = ds.fetch_dataset(tmp_path / "src", source="auto", n_generated=2, offline_photos=PHOTOS[:1], verbose=False)
    assert report.source == "offline" and len(report.records) == 3


def test_failed_download_falls_back_loudly_or_raises_when_asked_for(monkeypatch, tmp_path, capsys):
    for var in ("KOLORS_KIT_WEIGHTS", "MODELSCOPE_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)

    def no_network(*args, **kwargs):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(ds, "_fetch_modelscope", no_network)
    report = ds.fetch_dataset(tmp_path / "a", source="auto", n_generated=2, offline_photos=[], verbose=False)
    assert report.source == "offline"
    assert "FALLING BACK" in capsys.readouterr().out and any("ConnectionError" in n for n in report.notes)
    with pytest.raises(ds.DatasetUnavailable, match="source='offline'"):
        ds.fetch_dataset(tmp_path / "b", source="modelscope")
    with pytest.raises(ValueError):
        ds.resolve_source("hub")


def test_broken_images_are_reported_and_excluded(small_set):
    rejected = {r["file"] for r in small_set.rejected}
    assert rejected == {"broken_truncated.jpg", "broken_empty.jpg", "broken_html.png"}
    listed = {r["image"][0] for r in ds.read_jsonl(small_set.metadata)}
    assert len(listed) == 13 and not any("broken" in p for p in listed)
    assert ds.check_image(small_set.folder / "images" / "broken_truncated.jpg")
    assert ds.check_image(listed.pop()) is None


def test_captions_sidecar_then_dataset_then_template(tmp_path):
    image = tmp_path / "a.jpg"
    Image.new("RGB", (300, 200)).save(image)
    assert ds.caption_for(image, "数据集的描述", trigger="kst") == "数据集的描述"
    assert ds.caption_for(image, None, trigger="kst", subject="一只猫") == "kst，一只猫，横版构图"
    image.with_suffix(".txt").write_text("手写的描述\n", encoding="utf-8")
    assert ds.caption_for(image, "数据集的描述") == "手写的描述"


def test_captions_differ_per_image(small_set):
    texts = [r["text"] for r in small_set.records]
    assert len(set(texts)) > len(texts) // 2


def test_training_folder_layout_idempotent_and_guarded(small_set, tmp_path):
    records = small_set.records[:4]
    root = tmp_path / "lora_dataset"
    first = ds.write_training_folder(records, root, buckets=ds.SDXL_BUCKETS, verbose=False)
    assert first.status == "written" and first.count == 4
    with open(first.metadata, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["file_name", "text"] and len(rows) == 5
    for name, _ in rows[1:]:
        with Image.open(first.train / name) as im:
            assert im.size in ds.SDXL_BUCKETS
    again = ds.write_training_folder(records, root, buckets=ds.SDXL_BUCKETS, verbose=False)
    assert again.status == "unchanged" and again.fingerprint == first.fingerprint
    with pytest.raises(OutputExistsError):
        ds.write_training_folder(records[:2], root, verbose=False)
    assert ds.write_training_folder(records[:2], root, overwrite=True, verbose=False).count == 2
    assert not root.with_name("lora_dataset.building").exists()
    with pytest.raises(ValueError, match="nothing to train"):
        ds.write_training_folder([], tmp_path / "empty")


def test_fit_to_bucket_crops_to_the_nearest_shape():
    assert ds.nearest_bucket(2000, 1000, ds.SDXL_BUCKETS) == (1344, 768)
    out = ds.fit_to_bucket(Image.new("RGB", (600, 400)), (1152, 896))
    assert out.size == (1152, 896)


# --- Data-Juicer: these run the real library (a few seconds each after its import) ---

@pytest.fixture(scope="module")
def recipe_runs(small_set, tmp_path_factory):
    from helpers.dj import run_recipe

    out = tmp_path_factory.mktemp("dj")
    return {name: run_recipe(name, small_set.metadata, out / name) for name in ("baseline", "keep_more")}


def test_recipes_run_through_data_juicer_and_every_filter_drops_something(recipe_runs, small_set):
    base, more = recipe_runs["baseline"], recipe_runs["keep_more"]
    for run in (base, more):
        assert run.n_input == len(small_set.records)
        assert len(run.kept) + sum(len(v) for v in run.dropped.values()) == run.n_input
        assert all(run.dropped[op] for op, _ in run.ops), f"{run.name}: a filter dropped nothing"
        assert not run.notes
        assert (run.run_dir / "result.jsonl").exists()
    assert 0 < len(base.kept) < len(more.kept) < more.n_input
    # every kept image really passes the baseline's thresholds (Data-Juicer's stats say so)
    for row in base.table().query("kept").itertuples():
        assert row.width >= 1024 and row.height >= 1024 and 0.5 <= row.aspect_ratio <= 2.0


def test_dropped_samples_carry_the_statistic_that_dropped_them(recipe_runs):
    from helpers.dj import drop_reason

    run = recipe_runs["baseline"]
    table = run.table()
    shape = table[table.dropped_by == "image_shape_filter"]
    assert ((shape.width < 1024) | (shape.height < 1024)).all()
    aspect = table[table.dropped_by == "image_aspect_ratio_filter"]
    assert ((aspect.aspect_ratio < 0.5) | (aspect.aspect_ratio > 2.0)).all()
    label = drop_reason(aspect.iloc[0], dict(run.ops))
    assert label.startswith("aspect:") and "[0.5, 2.0]" in label
    counts = run.counts()
    assert list(counts.operator) == [op for op, _ in run.ops]
    assert counts.left.iloc[-1] == len(run.kept)


def test_recipe_files_parse_and_keep_their_kit_section():
    from helpers.dj import list_recipes, load_recipe, recipe_ops

    assert {"baseline", "keep_more", "aesthetic"} <= set(list_recipes())
    config, kit = load_recipe("keep_more")
    assert "kit" not in config and kit["buckets"][0] == [1024, 1024]
    ops = dict(recipe_ops(load_recipe("baseline")[0]))
    assert ops["image_shape_filter"]["min_width"] == 1024 and ops["image_aspect_ratio_filter"]["max_ratio"] == 2.0
    with pytest.raises(FileNotFoundError):
        load_recipe("nope")


# --- the aesthetic score's scale ---

@pytest.fixture(scope="module")
def aesthetic_path():
    from helpers.models import resolve_models

    return resolve_models(["aesthetic"], verbose=False).aesthetic


def test_kit_model_path_is_divided_by_ten_and_thresholds_follow(aesthetic_path, tmp_path):
    from helpers.dj import aesthetic_threshold, dj_divides_by_ten, prepare_recipe

    assert "aesthetics-predictor" in str(aesthetic_path)
    assert dj_divides_by_ten(aesthetic_path)
    assert aesthetic_threshold(6.0, aesthetic_path) == pytest.approx(0.6)
    # a copy under another name: Data-Juicer compares raw 1-10 scores, the kit converts
    other = tmp_path / "my-scorer-v2-linear"
    shutil.copytree(aesthetic_path, other)
    assert not dj_divides_by_ten(other)
    assert aesthetic_threshold(6.0, other) == 6.0
    data = tmp_path / "m.jsonl"
    data.write_text("", encoding="utf-8")
    _, config, _ = prepare_recipe("aesthetic", data, tmp_path / "run", aesthetic_model=other, min_aesthetic=6.0)
    params = dict((next(iter(e)), e[next(iter(e))]) for e in config["process"])["image_aesthetics_filter"]
    assert params["min_score"] == 6.0 and params["max_score"] >= 10.0
    with pytest.raises(ValueError, match="1-10 scale"):
        prepare_recipe("aesthetic", data, tmp_path / "run2", aesthetic_model=other)


def test_data_juicer_score_is_the_predictor_score_over_ten(aesthetic_path, small_set):
    import torch
    from aesthetics_predictor import AestheticsPredictorV2Linear
    from data_juicer.ops.filter.image_aesthetics_filter import ImageAestheticsFilter
    from data_juicer.utils.constant import Fields
    from transformers import CLIPProcessor

    image_path = small_set.records[0]["image"][0]
    op = ImageAestheticsFilter(hf_scorer_model=str(aesthetic_path), image_key="image")
    sample = op.compute_stats_single({"image": [image_path], "text": "", Fields.stats: {}})
    dj_score = sample[Fields.stats]["image_aesthetics_scores"][0]
    model = AestheticsPredictorV2Linear.from_pretrained(aesthetic_path).eval()
    processor = CLIPProcessor.from_pretrained(aesthetic_path)
    with Image.open(image_path) as im:
        inputs = processor(images=[im.convert("RGB")], return_tensors="pt")
    with torch.no_grad():
        raw = model(**inputs).logits.item()
    assert dj_score == pytest.approx(raw / 10.0, rel=1e-4, abs=1e-9)
