import numpy as np
import pytest

from histosmith.data.conditioning import ConditionSpec
from histosmith.errors import HistoSmithError
from histosmith.runtime import conditions as cond
from histosmith.runtime.info import GeneratorInfo
from histosmith.runtime.schedule import ScheduleConfig
from histosmith.runtime.seeds import tile_noise

SPEC = ConditionSpec(("common", "rare"), ("a", "b"), (10.0, 2.0), (20, 4))
COUNTS = np.array([[10, 0], [12, 1], [8, 0], [15, 0], [11, 4], [9, 0], [14, 0], [13, 2]], np.int64)
INFO = GeneratorInfo(SPEC, ScheduleConfig(), (3, 4, 4), 16, COUNTS, np.array([0, 1] * 4))


def test_explicit_and_dataset_draws_are_per_tile():
    t = cond.explicit(INFO, np.array([3, 1]), 1, 5)
    assert t.counts.tolist() == [[3, 1]] * 5 and t.tissues.tolist() == [1] * 5
    a, b = cond.from_dataset(INFO, 10, seed=4), cond.from_dataset(INFO, 20, seed=4)
    assert (a.counts == b.counts[:10]).all()  # tile i does not depend on how many tiles are asked for
    assert set(map(tuple, a.counts)) <= set(map(tuple, COUNTS))


def test_balance_raises_rare_class_within_the_trained_range():
    t = cond.balanced(INFO, 200, seed=0)
    assert t.counts[:, 1].mean() > COUNTS[:, 1].mean() + 1
    assert t.counts[:, 1].max() <= 4 and t.counts[:, 0].max() <= 20
    SPEC.check_range(t.counts)  # never needs --allow-extrapolation
    # ... and inside the drawn tile's tissue: tissue b's training tiles hold at most 2 of the rare class
    b = t.tissues == 1
    assert t.counts[b, 1].max() == 2 and t.counts[~b, 1].max() == 4
    assert t.counts[b, 1].mean() > COUNTS[1::2, 1].mean()


def test_csv_conditions(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text("common,rare,tissue\n3,1,b\n5,0,a\n")
    t = cond.from_csv(INFO, p, 5)
    assert t.counts.tolist() == [[3, 1], [5, 0], [3, 1], [5, 0], [3, 1]]
    assert t.tissues.tolist() == [1, 0, 1, 0, 1]
    p.write_text("common,oops\n3,1\n")
    with pytest.raises(HistoSmithError, match="unknown columns"):
        cond.from_csv(INFO, p, None)
    p.write_text("common,tissue\n3,zz\n")
    with pytest.raises(HistoSmithError, match="unknown tissue"):
        cond.from_csv(INFO, p, None)
    p.write_text("common,tissue\n-3,a\n")
    with pytest.raises(HistoSmithError, match="negative"):
        cond.from_csv(INFO, p, None)


def _request_counts(text, n=3):
    return cond.ConditionRequest.from_options(n, text, "a", None, False, False).resolve(INFO, 0)


def test_counts_request_defaults_missing_classes_to_zero():
    assert _request_counts("rare=3").counts.tolist() == [[0, 3]] * 3
    assert _request_counts(" common = 4 , rare=2 ").counts.tolist() == [[4, 2]] * 3


@pytest.mark.parametrize(
    "text, message",
    [
        ("lymphocyte=3", "unknown class"),
        ("common=-1", "negative"),
        ("common=2.5", "not a whole number"),
        ("common", "expected name=count"),
        ("common=1,common=2", "given twice"),
        ("", "no class counts"),
        ("common=99999999999999999999", "beyond any tile"),
    ],
)
def test_counts_request_errors(text, message):
    with pytest.raises(HistoSmithError, match=message):
        _request_counts(text)


def test_tile_noise_depends_only_on_seed_and_index():
    a, _ = tile_noise(7, np.arange(0, 6), (3, 4, 4), 10, False)
    b, steps = tile_noise(7, np.arange(4, 8), (3, 4, 4), 10, True)
    assert np.array_equal(a[4:], b[:2])
    assert steps.shape == (10, 4, 3, 4, 4)
    c, _ = tile_noise(8, np.arange(0, 2), (3, 4, 4), 10, False)
    assert not np.array_equal(a[:2], c)


def test_csv_from_a_spreadsheet_bom_and_crlf(tmp_path):
    """A CSV saved by a spreadsheet: UTF-8 byte-order mark, CRLF line ends."""
    from histosmith.runtime.conditions import from_csv

    path = tmp_path / "c.csv"
    names = list(INFO.spec.class_names)
    path.write_bytes(("\ufeff" + ",".join(names) + ",tissue\r\n" + ",".join("1" for _ in names) + ","
                      + INFO.spec.tissue_names[1] + "\r\n").encode("utf-8"))
    table = from_csv(INFO, path, 3)
    assert table.counts.tolist() == [[1] * len(names)] * 3 and table.tissues.tolist() == [1, 1, 1]
    path.write_bytes(("\ufeffblob\r\n1\r\n").encode("utf-8"))
    with pytest.raises(HistoSmithError, match=r"unknown columns \['blob'\] \(the header reads"):
        from_csv(INFO, path, 1)
