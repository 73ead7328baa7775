"""The selection grammar: parsing, masks, errors (no eval)."""

from __future__ import annotations

import numpy as np
import pytest

from calogan.core.errors import InputError
from calogan.ecal.data import CaloData
from calogan.studies.selection import apply_selection, overlap_fraction, parse_selection


def _data() -> CaloData:
    point = np.array([[0, 0, 0], [3, 4, 0], [10, 0, 0], [-1, -1, 0]], np.float32)
    momentum = np.array([[0, 0, 10], [1, 2, 30], [0, 0, 50], [3, 0, 4]], np.float32)
    pdg = np.array([11, 22, 11, 22])
    return CaloData(point=point, momentum=momentum, pdg=pdg, path="mem.npz")


def test_terms_and_conjunction():
    d = _data()
    assert parse_selection("p<20").mask(d).tolist() == [True, False, False, True]
    assert parse_selection("p>=20").mask(d).tolist() == [False, True, True, False]
    assert parse_selection("pdg==11").mask(d).tolist() == [True, False, True, False]
    assert parse_selection("r<5").mask(d).tolist() == [True, False, False, True]
    assert parse_selection("r<=5").mask(d).tolist() == [True, True, False, True]
    assert parse_selection(" pdg == 22 & p < 20 ").mask(d).tolist() == [False, False, False, True]
    assert parse_selection("pt>2.5e0").mask(d).tolist() == [False, False, False, True]
    assert parse_selection("all").mask(d).all() and parse_selection("").mask(d).all()
    assert str(parse_selection("p<20&pdg!=11")) == "p<20 & pdg!=11"


def test_complementary_selections_are_disjoint():
    d = _data()
    assert overlap_fraction(d, parse_selection("p<20"), parse_selection("p>=20")) == 0.0


@pytest.mark.parametrize(
    "text", ["p<", "q<3", "p<<3", "p<3 | pdg==11", "__import__('os')<1", "pdg==13", "p<3 &", "3<p"]
)
def test_bad_selections_raise_input_error(text):
    with pytest.raises(InputError, match="--train-selection"):
        parse_selection(text, option="--train-selection")


def test_empty_selection_raises():
    with pytest.raises(InputError, match="selects no events"):
        apply_selection(_data(), "p>1000", option="--test-selection")
    assert len(apply_selection(_data(), "pdg==22")) == 2
