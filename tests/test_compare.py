import pandas as pd

from skinlesion.compare import CompareConfig, compare
from skinlesion.report import write_comparison_report


def test_compare_runs_both_protocols_and_writes_the_report(shared_data, tmp_path):
    config = CompareConfig(models=("alexnet",), size=64, extra_sizes=(80,), epochs=1)
    results = compare(shared_data, tmp_path / "cmp", config)
    assert list(zip(results["protocol"], results["size"])) == [("lesion", 64), ("paper", 64), ("lesion", 80)]
    assert results["test_bacc"].between(0, 1).all() and (results["params_m"] > 1).all()
    assert (results["cpu_latency_ms"] > 0).all()
    report = write_comparison_report(tmp_path / "cmp", tmp_path / "docs" / "comparison.md", "skinlesion compare ...")
    text = report.read_text()
    assert "Research tool, not a diagnosis" in text and "| 1 | alexnet |" in text
    assert "inflation (points)" in text and "80px" in text
    for plot in ("recall", "confusion", "learning-curves", "cost"):
        assert (tmp_path / "docs" / f"comparison-{plot}.png").stat().st_size > 1000
    # Resumable: a second call trains nothing and gives the same numbers.
    again = compare(shared_data, tmp_path / "cmp", config)
    pd.testing.assert_series_equal(again["test_bacc"], results["test_bacc"])
