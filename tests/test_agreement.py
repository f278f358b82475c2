"""Agreement metrics (SRCC/PLCC against a ratings CSV) and the synthetic ranked set."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import stats

from helpers.agreement import (SYNTHETIC_LABEL, agreement, chain_srcc, clean_id, degrade, load_ratings,
                               make_ranked_set, procedural_images, ranked_set_paths)
from helpers.io import OutputExistsError


@pytest.mark.parametrize("raw, expected", [
    ("1001", "1001"), ("1001.0", "1001"), (1001.0, "1001"), (1001, "1001"), ("1001.jpg", "1001"),
    ("1001.JPG", "1001"), ("images/1001.png", "1001"), ("C:\\data\\1001.jpeg", "1001"), (" 1001.00 ", "1001"),
    ("s00_blur_3", "s00_blur_3"), ("a.b", "a.b"),
])
def test_clean_id_tolerates_spreadsheet_and_file_names(raw, expected):
    assert clean_id(raw) == expected


def test_agreement_matches_ids_reports_unmatched_and_equals_scipy(tmp_path):
    csv = tmp_path / "ratings.csv"
    csv.write_text("ID,score\n1001.0,3.0\n1002.0,5.5\n1003.jpg,4.0\n1004,7.0\n1005,2.0\n9999,1.0\n1006,notanumber\n")
    ratings = load_ratings(csv)
    assert len(ratings) == 6  # the non-numeric row is dropped
    scores = pd.DataFrame({
        "path": ["/x/1001.jpg", "/x/1002.png", "/x/1003.jpg", "/x/1004.jpg", "/x/1005.jpg", "/x/7777.jpg", "/x/1008.jpg"],
        "score": [3.1, 5.0, 4.4, 6.9, 2.5, 4.0, None],
        "error": [None, None, None, None, None, None, "cannot identify image file"],
    })
    result = agreement(scores, csv)
    assert result.n == 5
    assert result.unmatched_ratings == ["9999"]
    assert result.unmatched_scores == ["7777"]
    assert result.failed == ["1008"]
    x, y = [3.1, 5.0, 4.4, 6.9, 2.5], [3.0, 5.5, 4.0, 7.0, 2.0]
    assert result.srcc == pytest.approx(stats.spearmanr(x, y)[0])
    assert result.plcc == pytest.approx(stats.pearsonr(x, y)[0])
    assert result.label == "human ratings"
    assert "9999" in result.summary() and "SRCC" in result.summary()


def test_agreement_explains_when_nothing_matches(tmp_path):
    ratings = pd.DataFrame({"id": ["a", "b", "c"], "rating": [1.0, 2.0, 3.0]})
    with pytest.raises(ValueError, match="matched"):
        agreement({"x.jpg": 1.0, "y.jpg": 2.0, "z.jpg": 3.0}, ratings)


def test_agreement_constant_scores_are_nan_with_a_note():
    ratings = pd.DataFrame({"id": ["a", "b", "c"], "rating": [1.0, 2.0, 3.0]})
    result = agreement({"a": 5.0, "b": 5.0, "c": 5.0}, ratings)
    assert np.isnan(result.srcc) and result.notes


def test_load_ratings_says_which_column_is_missing(tmp_path):
    csv = tmp_path / "r.csv"
    csv.write_text("foo,bar\n1,2\n")
    with pytest.raises(ValueError, match="id_column"):
        load_ratings(csv)
    assert list(load_ratings(csv, id_column="foo", rating_column="bar")["rating"]) == [2.0]


def test_degradations_damage_more_at_each_level():
    image = procedural_images(1, 128, seed=3)[0]
    clean = np.asarray(image, np.float32)
    for kind in ("blur", "noise", "jpeg"):
        errors = [np.abs(np.asarray(degrade(image, kind, lv, 5), np.float32) - clean).mean() for lv in range(5)]
        assert errors[0] == 0
        assert all(a < b for a, b in zip(errors, errors[1:])), (kind, errors)


def test_ranked_set_is_labelled_synthetic_and_ordered(tmp_path):
    table = make_ranked_set(tmp_path / "ranked", n_sources=2, size=96, levels=4)
    assert len(table) == 2 * 3 * 4
    on_disk = pd.read_csv(tmp_path / "ranked" / "ratings.csv")
    assert set(on_disk["label"]) == {SYNTHETIC_LABEL}
    assert "NOT HUMAN" in (tmp_path / "ranked" / "README.txt").read_text()
    paths = ranked_set_paths(tmp_path / "ranked")
    assert all(p.is_file() for p in paths)
    # A reference measure of damage (not a scorer of the kit): high-frequency energy falls with blur.
    def detail(path):
        a = np.asarray(Image.open(path).convert("L"), np.float32)
        return float(np.abs(np.diff(a, axis=1)).mean())
    blur = {p.stem: detail(p) for p in paths if "_blur_" in p.stem}
    chains = chain_srcc(blur, load_ratings(tmp_path / "ranked" / "ratings.csv"))
    assert len(chains) == 2 and (chains["srcc"] == 1.0).all()
    assert agreement(blur, on_disk.assign(id=on_disk["id"].map(clean_id))).label == SYNTHETIC_LABEL
    with pytest.raises(OutputExistsError):
        make_ranked_set(tmp_path / "ranked", n_sources=2, size=96, levels=4)
