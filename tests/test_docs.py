"""Docs that tell the truth: README's and docs/results.md's results tables are generated from the benchmark JSON."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from conftest import load_benchmark

REPO = Path(__file__).resolve().parents[1]


def _results_table():
    spec = importlib.util.spec_from_file_location("results_table", REPO / "benchmarks" / "results_table.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["results_table"] = module
    spec.loader.exec_module(module)
    return module


results_table = _results_table()


@pytest.mark.parametrize("target", results_table.TARGETS, ids=lambda p: p.name)
def test_results_table_equals_the_newest_benchmark_json(target: Path) -> None:
    benchmarks = results_table.newest_benchmarks()
    table = results_table.render_table(benchmarks, json.loads(results_table.PAPER_FILE.read_text()))
    text = target.read_text()
    assert results_table.replace_block(text, table, target.name) == text, (
        f"{target.name} is out of date: run python benchmarks/results_table.py"
    )
    # the figures shown are the JSON's own, rounded: e.g. medsymmflow's test ACC of every dataset
    for _, bench in benchmarks.values():
        assert f"{100 * bench['results']['medsymmflow']['acc']:.1f} ±" in text


def test_newest_benchmark_wins_and_tables_need_their_markers(tmp_path: Path) -> None:
    row = {"results": {}, "date": "2026-01-01"}
    for version in (2, 10, 9):
        (tmp_path / f"retinamnist_benchmark_v{version}.json").write_text(json.dumps(row | {"version": version}))
    (tmp_path / "retinamnist_generation_metrics.json").write_text("{}")
    newest = results_table.newest_benchmarks(tmp_path)
    assert list(newest) == ["retinamnist"] and newest["retinamnist"][1]["version"] == 10
    with pytest.raises(ValueError, match="results-table"):
        results_table.replace_block("no markers here", "table", "README.md")
    with pytest.raises(FileNotFoundError, match="benchmark"):
        results_table.newest_benchmarks(tmp_path / "empty")


def test_segmentation_table_equals_the_newest_segmentation_benchmark_json() -> None:
    # the fixed-width table benchmarks/segmentation.py prints, from its newest JSON in docs/results/
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from segmentation import format_table
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    newest = max((REPO / "docs" / "results").glob("celebamask_hq_segmentation_v*.json"), key=lambda p: int(p.stem.rsplit("_v", 1)[1]))
    table = format_table(json.loads(newest.read_text()))
    text = (REPO / "docs" / "results.md").read_text()
    block = text.split("<!-- segmentation-table:begin -->", 1)[1].split("<!-- segmentation-table:end -->", 1)[0]
    assert block.strip() == f"```\n{table}\n```" and newest.name in text


def test_unified_tables_equal_the_newest_unified_benchmark_jsons() -> None:
    # one block per dataset: the fixed-width table benchmarks/unified.py prints, from that dataset's newest JSON
    format_table = load_benchmark("unified").format_table
    text = (REPO / "docs" / "results.md").read_text()
    for flag, (path, bench) in results_table.newest_benchmarks(kind="unified").items():
        begin, end = f"<!-- unified-table:{flag}:begin -->", f"<!-- unified-table:{flag}:end -->"
        assert begin in text and end in text, f"docs/results.md has no {begin} block"
        block = text.split(begin, 1)[1].split(end, 1)[0]
        assert block.strip() == f"```\n{format_table(bench['table'])}\n```" and path.name in text
