"""Training data: offline fallback, captions, Data-Juicer recipes, the training folder."""

import csv

import pytest

from helpers import dataset as D
from helpers import dj
from helpers.io import OutputExistsError
from helpers.models import resolve_models


@pytest.fixture(scope="module")
def fetched(tmp_path_factory):
    return D.fetch_dataset(tmp_path_factory.mktemp("fetch") / "raw", source="auto", n_generated=8, verbose=False)


def test_offline_fallback_is_chosen_without_network_and_says_why(fetched):
    assert fetched.source == "offline"
    assert any("KOLORS_KIT_WEIGHTS" in note for note in fetched.notes)
    records = D.read_jsonl(fetched.metadata)
    assert records and all(len(r["image"]) == 1 for r in records)
    photos = [r for r in records if r["licence"]]
    assert photos, "the offline set includes real photographs, each with its licence recorded"


def test_corrupt_inputs_are_reported_not_fatal(fetched):
    assert fetched.rejected, "the offline set ships unreadable files to show they are reported"
    assert all(r["error"] for r in fetched.rejected)
    kept_names = {r["id"] for r in fetched.records}
    assert not kept_names & {r["file"].rsplit(".", 1)[0] for r in fetched.rejected}


def test_captions_are_per_image_not_one_fixed_string(fetched):
    captions = {r["text"] for r in fetched.records}
    assert len(captions) > 1


def test_fetch_never_overwrites_silently(fetched):
    with pytest.raises(OutputExistsError):
        D.fetch_dataset(fetched.folder, source="offline", verbose=False)


def test_every_shipped_recipe_is_a_data_juicer_config():
    for name in dj.list_recipes():
        config, _ = dj.load_recipe(name)
        ops = dj.recipe_ops(config)
        assert ops and config["image_key"] == "image", name


def test_aesthetic_threshold_scale_follows_data_juicer():
    path = resolve_models(("aesthetic",), verbose=False).aesthetic
    # the kit's folder name contains 'aesthetics-predictor', so Data-Juicer divides scores by 10
    assert dj.dj_divides_by_ten(path) is True
    assert dj.aesthetic_threshold(6.0, path) == pytest.approx(0.6)
    assert dj.aesthetic_threshold(6.0, "/some/other/scorer") == pytest.approx(6.0)


def test_baseline_recipe_runs_through_data_juicer_and_keeps_and_drops(fetched, tmp_path):
    run = dj.run_recipe("baseline", fetched.metadata, tmp_path / "baseline")
    dropped = sum(len(v) for v in run.dropped.values())
    assert run.n_input == len(fetched.records)
    assert run.kept and dropped and len(run.kept) + dropped == run.n_input
    for sample in run.kept:
        assert "image" in sample


def test_training_folder_is_diffsynth_layout_and_idempotent(fetched, tmp_path):
    root = tmp_path / "lora_dataset"
    first = D.write_training_folder(fetched.records[:4], root, buckets=[(64, 64), (64, 96)], verbose=False)
    assert first.status == "written" and first.count == 4
    with open(first.metadata, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["file_name", "text"] and all((first.train / r["file_name"]).is_file() for r in rows)
    again = D.write_training_folder(fetched.records[:4], root, buckets=[(64, 64), (64, 96)], verbose=False)
    assert again.status == "unchanged"
    with pytest.raises(OutputExistsError):
        D.write_training_folder(fetched.records[:3], root, verbose=False)
    with pytest.raises(ValueError, match="loosen"):
        D.write_training_folder([], tmp_path / "empty", verbose=False)
