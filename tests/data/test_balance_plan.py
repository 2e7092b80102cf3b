"""hs-data plan: the share arithmetic on known counts, allocation limits, the CSV round trip, bad input."""

import csv
import json

import numpy as np
import pytest

from histosmith.data.balance_plan import RealCounts, allocate, parse_target_shares, plan_balance
from histosmith.errors import HistoSmithError
from tests.conftest import run_cli

NAMES = ["a", "b", "c"]


def _real():
    # 4 tiles; totals a=20, b=4, c=16 (shares 0.5, 0.1, 0.4); trained range a<=8, b<=2, c<=6
    counts = np.array([[8, 0, 4], [6, 2, 6], [4, 2, 2], [2, 0, 4]])
    return RealCounts(counts, ["x", "y", "x", "y"], NAMES, [8, 2, 6])


def test_parse_target_shares():
    assert parse_target_shares("a=0.5", NAMES) == [0.5, 0.25, 0.25]
    assert parse_target_shares("a=0.2,b=0.3,c=0.5", NAMES) == [0.2, 0.3, 0.5]
    for text, needle in [("z=0.1", "unknown class 'z'"), ("a=1.5", "must lie in 0..1"), ("a=0.7,b=0.6", "above 1"),
                         ("a=x", "not a number"), ("a=0.2,b=0.2,c=0.2", "not 1"), ("a=0.1,a=0.2", "twice"),
                         ("a=nan", "0..1"), ("", "no class shares")]:
        with pytest.raises(HistoSmithError, match=needle):
            parse_target_shares(text, NAMES)


def test_allocate_is_exact_proportional_and_capped():
    out = allocate(10, np.array([1, 1, 2, 0]), cap=4)
    assert out.sum() == 10 and (out <= 4).all()
    assert out[2] == 4  # the heaviest tile fills up first
    assert allocate(7, np.zeros(3), cap=3).sum() == 7  # no weight: spread over tiles with room
    with pytest.raises(HistoSmithError):
        allocate(13, np.ones(3), cap=4)


def test_plan_reaches_equal_shares_on_known_counts():
    real = _real()
    plan = plan_balance(real, [1 / 3] * 3, n_synthetic=30, seed=1)
    assert plan.shares_before == pytest.approx([0.5, 0.1, 0.4])
    # the total must reach T >= max(R_c / s_c) = 60, so b needs >= 16 synthetic nuclei
    totals = np.array(plan.synthetic_totals)
    after = real.counts.sum(0) + totals
    assert after / after.sum() == pytest.approx([1 / 3] * 3, abs=0.01)
    assert plan.shares_after == pytest.approx(list(after / after.sum()))
    assert (plan.counts <= np.array(real.count_max)).all() and (plan.counts >= 0).all()
    assert plan.counts.sum(0).tolist() == plan.synthetic_totals
    assert set(plan.tissues) <= {"x", "y"}
    again = plan_balance(real, [1 / 3] * 3, n_synthetic=30, seed=1)
    assert np.array_equal(plan.counts, again.counts) and plan.tissues == again.tissues


def test_plan_refuses_infeasible_targets():
    real = _real()
    # b at 0.9: T >= 20 / 0.05 = 400 nuclei, b needs 360 - 4 synthetic at <= 2 per tile: 178 tiles
    with pytest.raises(HistoSmithError, match="at least 178 synthetic tiles"):
        plan_balance(real, [0.05, 0.9, 0.05], n_synthetic=10)
    with pytest.raises(HistoSmithError, match="share cannot be 0"):
        plan_balance(real, [0.0, 0.5, 0.5], n_synthetic=10)


def test_plan_command_and_generation_consumes_it(synthetic_dir, tiny_runs, tmp_path):
    out = tmp_path / "plan" / "conditions.csv"
    res = run_cli("hs-data", "plan", "--data", str(synthetic_dir), "--equalize", "--n-synthetic", "40",
                  "--split", "all", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "plan" / "conditions.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((tmp_path / "plan" / "conditions.json").read_text())
    assert summary["n_synthetic"] == 40
    assert summary["shares_after"] == pytest.approx([1 / len(summary["class_names"])] * len(summary["class_names"]),
                                                    abs=0.02)
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 40 and "tissue" in rows[0]
    rows = rows[:12]
    gen = tmp_path / "gen"
    # hs-sample and hs-generate read --conditions with the same code (histosmith.runtime.conditions)
    res = run_cli("hs-sample", "--checkpoint", str(tiny_runs["ldm"]), "--conditions", str(out), "--out",
                  str(gen), "--n", "12", "--steps", "2", "--batch", "12")
    assert res.returncode == 0, res.stderr
    from histosmith.data.reader import Dataset

    info = Dataset.open(gen).patch_info()
    names = summary["class_names"]
    assert [[int(r[f"requested_{n}"]) for n in names] for r in info] == [[int(r[n]) for n in names] for r in rows]
    assert [r["tissue"] for r in info] == [r["tissue"] for r in rows]


@pytest.mark.parametrize("args, needle", [
    (["--target-share", "nosuch=0.3"], "unknown class 'nosuch'"),
    (["--target-share", "x=1.2"], "must lie in 0..1"),
    (["--equalize", "--target-share", "x=0.1"], "exactly one of"),
    (["--equalize", "--n-synthetic", "0"], "at least 1"),
])
def test_plan_bad_input(synthetic_dir, tmp_path, args, needle):
    cmd = ["hs-data", "plan", "--data", str(synthetic_dir), "--out", str(tmp_path / "c.csv"), *args]
    if "--n-synthetic" not in args:
        cmd += ["--n-synthetic", "5"]
    if "x=" in " ".join(args):
        names = json.loads((synthetic_dir / "meta.json").read_text())["class_names"]
        cmd = [a.replace("x=", f"{names[0]}=") for a in cmd]
    res = run_cli(*cmd)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], res.stderr
    assert not (tmp_path / "c.csv").exists()


def test_plan_infeasible_command(synthetic_dir, tmp_path):
    names = json.loads((synthetic_dir / "meta.json").read_text())["class_names"]
    share = ",".join(f"{n}={v}" for n, v in zip(names, [0.98] + [0.02 / (len(names) - 1)] * (len(names) - 1),
                                                strict=True))
    res = run_cli("hs-data", "plan", "--data", str(synthetic_dir), "--target-share", share, "--n-synthetic", "1",
                  "--split", "all", "--out", str(tmp_path / "c.csv"))
    assert res.returncode == 2
    assert res.stderr.strip().startswith("error: infeasible:") and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "c.csv").exists()
