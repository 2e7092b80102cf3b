import numpy as np
import pytest

from histosmith.data.conditioning import ConditionSpec
from histosmith.errors import HistoSmithError

SPEC = ConditionSpec(("neutrophil", "epithelial"), ("crag", "glas"), (2.0, 40.0), (5, 80))


def test_vector_layout():
    v = SPEC.vector([4, 20], SPEC.tissue_index("glas"))
    assert v.dtype == np.float32
    assert v.tolist() == [2.0, 0.5, 0.0, 1.0]
    assert np.allclose(SPEC.counts_from_vectors(v), [4, 20])


def test_tissue_errors():
    with pytest.raises(HistoSmithError, match="unknown tissue"):
        SPEC.tissue_index("colon")
    with pytest.raises(HistoSmithError, match="choose a tissue"):
        SPEC.tissue_index(None)


def test_extrapolation_refused_unless_allowed(caplog):
    with pytest.raises(HistoSmithError, match="beyond the training range"):
        SPEC.check_range(np.array([6, 10]))
    warnings = SPEC.check_range(np.array([6, 10]), allow_extrapolation=True)
    assert len(warnings) == 1 and "neutrophil" in warnings[0]
    assert SPEC.check_range(np.array([5, 80])) == []


def test_json_round_trip():
    assert ConditionSpec.from_json(SPEC.to_json()) == SPEC
