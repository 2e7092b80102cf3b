import numpy as np

from tests.conftest import run_cli, write_conic_dir


def _one_error_line(result):
    lines = [line for line in result.stderr.splitlines()
             if line.strip() and "tile/s" not in line and "tile [" not in line]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_prepare_and_info(tmp_path):
    out = tmp_path / "d"
    r = run_cli("hs-data", "prepare", "--source", "synthetic", "--n-tiles", "12", "--tile-size", "32",
                "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "imbalance ratio" in r.stdout
    r = run_cli("hs-data", "info", str(out))
    assert r.returncode == 0 and "epithelial" in r.stdout and "area px: median" in r.stdout
    assert (out / "info.png").read_bytes()[:4] == b"\x89PNG"


def test_prepare_refuses_existing_output(tmp_path, synthetic_dir):
    line = _one_error_line(run_cli("hs-data", "prepare", "--source", "synthetic", "--out", str(synthetic_dir)))
    assert "already exists" in line


def test_info_on_missing_and_truncated(tmp_path):
    assert "missing" in _one_error_line(run_cli("hs-data", "info", str(tmp_path / "nope")))
    d = write_conic_dir(tmp_path / "c", np.zeros((2, 8, 8, 3), np.uint8), np.zeros((2, 8, 8, 2), np.int32),
                        ["a"], ["x_1", "x_2"])
    (d / "labels.npy").write_bytes((d / "labels.npy").read_bytes()[:-4])
    line = _one_error_line(run_cli("hs-data", "info", str(d)))
    assert "labels.npy" in line and "truncated" in line


def test_prepare_missing_path(tmp_path):
    assert "--path is required" in _one_error_line(
        run_cli("hs-data", "prepare", "--source", "conic", "--out", str(tmp_path / "o")))
    assert "not found" in _one_error_line(
        run_cli("hs-data", "prepare", "--source", "pannuke", "--path", str(tmp_path / "x"),
                "--out", str(tmp_path / "o")))


def test_failed_download_is_one_line(tmp_path):
    # An empty cache and an unreachable index: pip fails, we report one line.
    env = {"HISTOSMITH_CACHE": str(tmp_path / "cache"), "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
           "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(tmp_path)}
    line = _one_error_line(run_cli("hs-data", "prepare", "--source", "example", "--out", str(tmp_path / "o"), env=env))
    assert "downloading histolytics" in line
    assert not (tmp_path / "o").exists()


def test_info_reports_nucleus_areas_per_class(tmp_path):
    from histosmith.data.info import summarise
    from histosmith.data.reader import Dataset

    labels = np.zeros((2, 16, 16, 2), np.int32)
    labels[0, 0:2, 0:2] = (1, 1)  # class a: areas 4 and 9; class b: 6; class c: none
    labels[1, 5:8, 5:8] = (1, 1)
    labels[1, 10:12, 0:3] = (2, 2)
    d = write_conic_dir(tmp_path / "c", np.zeros((2, 16, 16, 3), np.uint8), labels, ["a", "b", "c"], ["x_1", "x_2"])
    summary = summarise(Dataset.open(d))
    assert np.allclose(summary.area_median[:2], [6.5, 6]) and np.allclose(summary.area_p99[:2], [8.95, 6])
    assert np.isnan(summary.area_median[2]) and summary.to_dict()["area_p99"] == {"a": 8.95, "b": 6.0, "c": None}
    row_c, = (line for line in summary.format_table().splitlines() if line.startswith("c "))
    assert row_c.split()[-2:] == ["nan", "nan"]  # the absent class has no area
