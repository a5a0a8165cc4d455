import pytest

from skinlesion.classes import CLASSES, CODES, lesion_class, parse_codes


def test_table_holds_the_eight_isic_2019_diagnoses_with_risk_groups():
    assert CODES == ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC")
    risk = {c.code: c.risk for c in CLASSES}
    assert {k for k, v in risk.items() if v == "malignant"} == {"MEL", "BCC", "SCC"}
    assert {k for k, v in risk.items() if v == "pre-malignant"} == {"AK"}
    assert {k for k, v in risk.items() if v == "benign"} == {"NV", "BKL", "DF", "VASC"}


def test_unknown_code_fails_with_the_choices():
    with pytest.raises(ValueError, match="choose from MEL, NV"):
        lesion_class("XYZ")
    assert parse_codes("scc, mel") == ("MEL", "SCC")
