"""The Ray recipe on a real local Ray cluster (a head on 127.0.0.1) against Data-Juicer's
single-machine executor, on 2,000 tiny generated images with some corrupt files among them.

The cluster test is the slow one (about 2-3 minutes on 2 cores); the rest take seconds.
"""

from __future__ import annotations

import json

import psutil
import pytest

from helpers.models import resolve_models
from helpers.scale import (AESTHETIC_OP, RECIPE, aesthetic_score_scale, image_dataset, load_recipe,
                           local_ray_head, make_image_folder, run_recipe)

N_IMAGES, N_CORRUPT = 2000, 12
# Test thresholds for 32-96 px images and the offline random predictor (whose scores are
# tiny: about 1e-6 to 1.5e-4 on Data-Juicer's /10 scale). Each filter must drop some images.
TEST_OPS = {
    "image_shape_filter": {"min_width": 56, "min_height": 56},
    "image_aspect_ratio_filter": {"min_ratio": 0.75, "max_ratio": 1.33},
    AESTHETIC_OP: {"min_score": 3e-5},
}


@pytest.fixture(scope="module")
def scorer():
    return resolve_models(("aesthetic",), verbose=False)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    made = make_image_folder(root / "images", n_images=N_IMAGES, n_corrupt=N_CORRUPT, progress=False)
    n = image_dataset(root / "images", root / "dataset.jsonl")
    assert n == N_IMAGES + N_CORRUPT
    return root, made


def test_recipe_is_runnable_on_both_executors():
    cfg = load_recipe(RECIPE, scorer_path="/models/aesthetics-predictor-v2-sac-logos-ava1-l14-linearMSE")
    assert cfg["executor_type"] == "ray" and cfg["ray_address"] == "auto"
    assert cfg["skip_op_error"] is True
    ops = [next(iter(op)) for op in cfg["process"]]
    assert ops == ["image_shape_filter", "image_aspect_ratio_filter", AESTHETIC_OP]
    # Batched image ops would drop a whole batch of good images with one bad file.
    assert all(op[name].get("batch_size") == 1 for op in cfg["process"] for name in op if name != AESTHETIC_OP)


def test_aesthetic_scale_is_what_data_juicer_does(scorer):
    # The kit's folder name contains "aesthetics-predictor": Data-Juicer divides by 10,
    # so the recipe's 0.6 means 6.0 on the competition's scale.
    assert aesthetic_score_scale(scorer.aesthetic) == 10.0
    assert aesthetic_score_scale("/models/my-laion-v2-linear") == 1.0
    with pytest.raises(ValueError, match="raw 1-10 scale"):
        load_recipe(RECIPE, scorer_path="/models/my-laion-v2-linear")
    with pytest.raises(ValueError, match="score/10"):
        load_recipe(RECIPE, scorer_path=scorer.aesthetic, op_args={AESTHETIC_OP: {"max_score": 10.0}})
    with pytest.raises(ValueError, match="no operator"):
        load_recipe(RECIPE, scorer_path=scorer.aesthetic, op_args={"image_size_filter": {}})


def test_image_folder_helpers(tmp_path):
    made = make_image_folder(tmp_path / "a", n_images=5, n_corrupt=3, progress=False)
    assert len(made["images"]) == 5 and len(made["corrupt"]) == 3
    with pytest.raises(FileExistsError):
        make_image_folder(tmp_path / "a", n_images=1, n_corrupt=0, progress=False)
    assert image_dataset(tmp_path / "a", tmp_path / "d.jsonl") == 8
    row = json.loads((tmp_path / "d.jsonl").read_text().splitlines()[0])
    assert set(row) == {"id", "images", "text"} and row["images"][0].startswith("/")
    with pytest.raises(FileExistsError):
        image_dataset(tmp_path / "a", tmp_path / "d.jsonl")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        image_dataset(tmp_path / "empty", tmp_path / "e.jsonl")


def _our_ray_processes() -> list[str]:
    """Command lines of live Ray processes started (directly or not) by this test process."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            cmdline = " ".join(proc.cmdline())
            if proc.status() != psutil.STATUS_ZOMBIE and "ray" in cmdline:
                found.append(cmdline)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def _listening_addresses() -> set[str]:
    """IP addresses on which this process or its descendants listen."""
    found = set()
    for proc in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        try:
            found |= {c.laddr.ip for c in proc.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def test_local_head_listens_on_loopback_only_and_always_stops():
    import ray  # imported before the head starts, as in a notebook

    seen = {}
    with pytest.raises(RuntimeError, match="boom"):
        with local_ray_head(num_cpus=1, object_store_mb=100) as address:
            seen["address"] = address
            assert any("raylet" in c for c in _our_ray_processes()), "no raylet running for the head we started"
            ray.init(address=address)
            try:
                assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
                assert ray.get(ray.remote(lambda: 1 + 1).remote()) == 2
                listening = _listening_addresses()
            finally:
                ray.shutdown()
            assert listening and listening <= {"127.0.0.1", "::ffff:127.0.0.1"}, listening
            raise RuntimeError("boom")
    assert seen["address"].startswith("127.0.0.1:")
    assert not _our_ray_processes(), "Ray processes left behind after the head was stopped"


def test_ray_cluster_keeps_what_one_machine_keeps(images, scorer, tmp_path):
    root, made = images
    cfg = load_recipe(RECIPE, scorer_path=scorer.aesthetic, op_args=TEST_OPS,
                      dataset_path=str(root / "dataset.jsonl"))

    single = run_recipe(cfg, tmp_path / "default", executor="default", np=2)
    with local_ray_head(num_cpus=2, object_store_mb=512) as address:
        on_ray = run_recipe(cfg, tmp_path / "ray", executor="ray", ray_address=address)
    assert not _our_ray_processes()

    # Same kept set, same failures, whichever executor ran the recipe.
    assert on_ray.kept == single.kept
    assert on_ray.corrupt == single.corrupt == sorted(made["corrupt"])
    assert on_ray.n_input == single.n_input == N_IMAGES + N_CORRUPT
    # Every image is accounted for, and every filter did something.
    assert len(single.kept) + len(single.filtered) + len(single.corrupt) == single.n_input
    assert 0 < len(single.kept) < N_IMAGES
    rows = {r["id"]: r["__dj__stats__"] for r in on_ray.kept_rows}
    assert min(s["image_width"][0] for s in rows.values()) >= 56
    assert min(s["image_aesthetics_scores"][0] for s in rows.values()) >= 3e-5
    decoded = json.loads((tmp_path / "default" / "report.json").read_text())
    assert decoded["n_corrupt"] == N_CORRUPT and decoded["weights"] == "offline-random"
    shape = TEST_OPS["image_shape_filter"]
    ratio = TEST_OPS["image_aspect_ratio_filter"]
    sized = {i for i, s in on_ray.decoded_stats.items()
             if s["image_width"][0] >= shape["min_width"] and s["image_height"][0] >= shape["min_height"]}
    shaped = {i for i in sized
              if ratio["min_ratio"] <= on_ray.decoded_stats[i]["image_width"][0] / on_ray.decoded_stats[i]["image_height"][0]
              <= ratio["max_ratio"]}
    assert len(sized) < N_IMAGES and len(shaped) < len(sized), "the shape and aspect filters dropped nothing"
    assert set(on_ray.kept) < shaped, "the aesthetic filter dropped nothing"
