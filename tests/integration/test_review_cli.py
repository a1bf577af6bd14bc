"""`review` on the command line: verdicts recorded as the OS user show up in `monitor --json`'s reader
block with the figures this test computes from the same verdicts; the films are kept for adaptation."""
import json
import shutil
from statistics import NormalDist

import pytest

from pneumo_core.settings import os_user


@pytest.fixture(scope="module")
def home(tmp_path_factory, trained_home):
    copy = tmp_path_factory.mktemp("review") / "home"
    shutil.copytree(trained_home, copy)
    return copy


def _wilson(k, n):
    z = NormalDist().inv_cdf(0.975)
    p = k / n
    centre, half = p + z * z / (2 * n), z * ((p * (1 - p) + z * z / (4 * n)) / n) ** 0.5
    return [(centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)]


def _review(cli, home, films, read, *extra):
    result = cli("review", *films, "--read", read, *extra, "--json", home=home)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def test_cli_verdicts_show_up_in_monitor_with_independently_computed_figures(home, synthetic_data, cli):
    pneumonia = sorted((synthetic_data / "test" / "PNEUMONIA").glob("*.jpeg"))[:6]
    normal = sorted((synthetic_data / "test" / "NORMAL").glob("*.jpeg"))[:6]
    given = _review(cli, home, pneumonia[:5] + normal[:1], "PNEUMONIA")       # normal[0] first read as PNEUMONIA ...
    given += _review(cli, home, normal[1:], "NORMAL")
    given += _review(cli, home, pneumonia[5:], "not-assessable")
    again = _review(cli, home, normal[:1], "NORMAL", "--zones", "right-lower", "--note", "second look")  # ... then not
    assert again[0]["supersedes"] == given[5]["verdict"] and again[0]["who"] == os_user()
    assert {g["model"] for g in given} == {again[0]["model"]}

    final = {g["sha256"]: (g["call"], g["read"]) for g in given + again}   # the latest read per film
    pairs = [pair for pair in final.values() if pair[1] != "not-assessable"]
    tp = sum(pair == ("PNEUMONIA", "PNEUMONIA") for pair in pairs)
    fn = sum(pair == ("NORMAL", "PNEUMONIA") for pair in pairs)
    tn = sum(pair == ("NORMAL", "NORMAL") for pair in pairs)
    fp = sum(pair == ("PNEUMONIA", "NORMAL") for pair in pairs)

    result = cli("monitor", "--json", home=home)
    assert result.returncode == 0, result.stderr[-3000:]
    reader = json.loads(result.stdout)["reader"]
    assert (reader["films"], reader["n"], reader["not_assessable"]) == (12, 11, 1)
    assert (reader["tp"], reader["fn"], reader["tn"], reader["fp"]) == (tp, fn, tn, fp)
    for key, k, n in (("sensitivity", tp, tp + fn), ("specificity", tn, tn + fp), ("ppv", tp, tp + fp),
                      ("npv", tn, tn + fn)):
        assert (reader[key]["k"], reader[key]["n"]) == (k, n), key
        if n:
            assert reader[key]["value"] == pytest.approx(k / n) and reader[key]["ci"] == pytest.approx(_wilson(k, n))
    disagreements = {(d["sha256"], d["read"]) for d in reader["disagreements"]}
    assert disagreements == {(sha, read) for sha, (call, read) in final.items()
                             if read != "not-assessable" and read != call}
    assert sum(t["n"] for t in reader["by_tier"].values()) == 11

    kept = json.loads(cli("reviewed", "list", "--json", home=home).stdout)
    assert len(kept) == 11 and {f["label"] for f in kept if f["sha256"] == again[0]["sha256"]} == {"NORMAL"}
    assert cli("audit", "verify", home=home).returncode == 0
    deleted = cli("reviewed", "delete", "--film", again[0]["sha256"], home=home)
    assert deleted.returncode == 0 and "deleted 1 reviewed film" in deleted.stdout


def test_a_read_that_is_not_one_of_the_three_is_refused_before_anything_is_scored(home, synthetic_data, cli):
    film = sorted((synthetic_data / "test" / "NORMAL").glob("*.jpeg"))[0]
    result = cli("review", film, "--read", "maybe", home=home)
    assert result.returncode == 2 and "invalid choice" in result.stderr
