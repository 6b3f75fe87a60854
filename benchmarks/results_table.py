"""The results tables of README.md and docs/results.md, generated from the newest benchmark JSON.

Each dataset's newest ``docs/results/<flag>_benchmark_v<N>.json`` (written by
``benchmarks/classification.py``) fills one row; the paper's figures come from
``docs/results/medsymmflow_paper.json``. The table replaces the block between the markers
``<!-- results-table:begin -->`` and ``<!-- results-table:end -->`` in both files, so no figure in them
is typed by hand:

    python benchmarks/results_table.py            # rewrite both tables
    python benchmarks/results_table.py --check    # exit 1 if either file differs from the JSON
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medsymmflow.data import medmnist_info  # noqa: E402

RESULTS_DIR = REPO / "docs" / "results"
PAPER_FILE = RESULTS_DIR / "medsymmflow_paper.json"
TARGETS = (REPO / "README.md", REPO / "docs" / "results.md")
BEGIN, END = "<!-- results-table:begin -->", "<!-- results-table:end -->"

__all__ = ["newest_benchmarks", "render_table", "replace_block"]


def newest_benchmarks(results_dir: Path = RESULTS_DIR, kind: str = "benchmark") -> dict[str, tuple[Path, dict[str, Any]]]:
    """Flag -> (path, contents) of the ``<flag>_<kind>_v<N>.json`` with the highest version number, in flag order."""
    pattern = re.compile(rf"^(?P<flag>[a-z0-9]+)_{re.escape(kind)}_v(?P<version>\d+)\.json$")
    best: dict[str, tuple[int, Path]] = {}
    for path in results_dir.glob(f"*_{kind}_v*.json"):
        m = pattern.match(path.name)
        if m and int(m["version"]) > best.get(m["flag"], (-1, path))[0]:
            best[m["flag"]] = (int(m["version"]), path)
    if not best:
        raise FileNotFoundError(f"no <flag>_{kind}_v<N>.json in {results_dir}")
    return {flag: (path, json.loads(path.read_text())) for flag, (_, path) in sorted(best.items())}


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def render_table(benchmarks: dict[str, tuple[Path, dict[str, Any]]], paper: dict[str, Any]) -> str:
    """The markdown table (rows in flag order) and, under it, the command and source of every row."""
    lines = [
        "| dataset | medsymmflow (CPU recipe) ACC / AUC | ResNet-18 side by side | MedSymmFlow paper (GPU) "
        "| throughput vs ResNet-18 | CPU, date |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    notes = []
    for flag, (path, bench) in benchmarks.items():
        ours, resnet = bench["results"]["medsymmflow"], bench["results"]["resnet18"]
        ref = paper["results"].get(flag, {})
        machine = bench.get("machine", {})
        lines.append(
            f"| {medmnist_info(flag)['python_class']} | {_pct(ours['acc'])} ± {_pct(ours['acc_2sigma'])} / {_pct(ours['auc'])} ± {_pct(ours['auc_2sigma'])} "
            f"| {_pct(resnet['acc'])} / {_pct(resnet['auc'])} | {_pct(ref.get('acc'))} / {_pct(ref.get('auc'))} "
            f"| {bench['throughput']['ratio']:.2f}x | {machine.get('cpu_model', '?')}, {bench['date'][:10]} |"
        )
        notes.append(f"- {flag}: `{bench['command']}` ({path.relative_to(REPO).as_posix()})")
    budgets = sorted({b["budget_minutes"] for _, b in benchmarks.values()})
    head = (
        f"Test split, {' / '.join(f'{m:g}' for m in budgets)}-minute training budget per model, both models side by "
        "side on one CPU thread each; ACC / AUC in %, medsymmflow mean ± 2σ over its inference runs. "
        f"Paper column: {paper['source']}."
    )
    return "\n".join([head, "", *lines, "", "Regenerate a row with its command (about 35 minutes each):", "", *notes])


def replace_block(text: str, table: str, where: str) -> str:
    """``text`` with the block between the results-table markers replaced by ``table``."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"{where} has no {BEGIN} ... {END} block")
    return text[: start + len(BEGIN)] + "\n" + table + "\n" + text[end:]


def main(argv: Sequence[str] | None = None) -> int:
    """Rewrite (or, with ``--check``, compare) the results tables; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 if a file differs from the JSON")
    args = parser.parse_args(argv)
    table = render_table(newest_benchmarks(), json.loads(PAPER_FILE.read_text()))
    print(table)
    stale = []
    for target in TARGETS:
        text = target.read_text()
        new = replace_block(text, table, target.relative_to(REPO).as_posix())
        if new != text:
            stale.append(target.relative_to(REPO).as_posix())
            if not args.check:
                target.write_text(new)
    if args.check and stale:
        print(f"results tables out of date in {', '.join(stale)}: run python benchmarks/results_table.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
