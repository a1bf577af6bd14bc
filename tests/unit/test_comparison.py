"""Candidate vs active on the films both were tested on."""
import json

import numpy as np
import pandas as pd
import pytest

from pneumo_core.golive.comparison import compare


def _version(models, name, paths, labels, probabilities, threshold):
    folder = models / name
    folder.mkdir(parents=True)
    (folder / "metadata.json").write_text(json.dumps({"threshold": threshold}))
    pd.DataFrame({"path": paths, "label": labels, "probability": probabilities, "split": "test"}).to_csv(
        folder / "predictions.csv", index=False)


def test_the_same_films_by_another_path_are_compared_and_disagreements_found(tmp_path):
    films = [f"train/{'PNEUMONIA' if i % 2 else 'NORMAL'}/f{i}.jpeg" for i in range(6)]
    labels = [i % 2 for i in range(6)]
    _version(tmp_path, "old", [f"../shared/data/{f}" for f in films], labels, [.1, .9, .2, .8, .3, .4], 0.5)
    _version(tmp_path, "new", [f"/abs/data/{f}" for f in films], labels, [.1, .9, .2, .8, .6, .7], 0.5)
    result = compare(tmp_path, "old", "new")
    assert result.n_common == 6 and result.note == ""
    assert result.metrics.loc["sensitivity"].to_dict() == {"old": pytest.approx(2 / 3), "new": 1.0}
    assert result.metrics.loc["specificity"].to_dict() == {"old": 1.0, "new": pytest.approx(2 / 3)}
    differ = result.disagreements
    assert list(differ["path"]) == ["../shared/data/train/NORMAL/f4.jpeg", "../shared/data/train/PNEUMONIA/f5.jpeg"]
    assert list(differ["call_new"]) == ["PNEUMONIA", "PNEUMONIA"] and list(differ["call_old"]) == ["NORMAL"] * 2


def test_versions_without_common_films_fall_back_to_their_own_test_sets_with_a_note(tmp_path):
    _version(tmp_path, "a", ["x/N/1.png", "x/P/2.png"], [0, 1], [0.2, 0.7], 0.5)
    _version(tmp_path, "b", ["y/N/3.png", "y/P/4.png", "y/P/5.png"], [0, 1, 1], [0.6, 0.7, 0.8], 0.5)
    result = compare(tmp_path, "a", "b")
    assert result.n_common == 0 and "not a like-for-like" in result.note
    assert result.metrics.loc["n"].to_dict() == {"a": 2, "b": 3} and result.disagreements.empty
    curves = result.curves()
    assert len(curves["a"][0]) == 2 and np.allclose(curves["b"][1], [0.6, 0.7, 0.8])
