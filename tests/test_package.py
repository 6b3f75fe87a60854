"""Package hygiene: light imports, and every public function documented and type-hinted."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys

import pytest

import medsymmflow


def test_package_imports_stay_light() -> None:
    code = (
        "import sys, medsymmflow, medsymmflow.transforms, medsymmflow.flow, medsymmflow.codes;"
        "heavy = [m for m in ('diffusers', 'medmnist', 'torchdiffeq') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"heavy modules imported at package import: {out.stdout.strip()}"


def _public_modules() -> list[str]:
    names = [medsymmflow.__name__]
    for info in pkgutil.walk_packages(medsymmflow.__path__, prefix="medsymmflow."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return names


@pytest.mark.parametrize("module_name", _public_modules())
def test_public_api_has_docstrings_and_hints(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert module.__doc__, f"{module_name} has no module docstring"
    problems = []
    for name, obj in vars(module).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != module_name:
            continue
        if inspect.isfunction(obj) or inspect.isclass(obj):
            if not inspect.getdoc(obj):
                problems.append(f"{name}: no docstring")
        members = [(name, obj)] if inspect.isfunction(obj) else []
        if inspect.isclass(obj):
            members += [
                (f"{name}.{m}", f)
                for m, f in vars(obj).items()
                if inspect.isfunction(f) and (not m.startswith("_") or m in ("__init__", "__call__"))
            ]
        for qual, fn in members:
            if not qual.endswith(("__init__", "__call__")) and not inspect.getdoc(fn):
                problems.append(f"{qual}: no docstring")
            sig = inspect.signature(fn)
            unhinted = [p for p in sig.parameters.values() if p.name not in ("self", "cls") and p.annotation is inspect.Parameter.empty]
            if unhinted or sig.return_annotation is inspect.Signature.empty:
                problems.append(f"{qual}: missing type hints")
    assert not problems, f"{module_name}: " + "; ".join(problems)


def test_ci_runs_the_readme_test_command() -> None:
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    readme = (repo / "README.md").read_text()
    block = readme.split("Run the tests:", 1)[1].split("```bash", 1)[1].split("```", 1)[0].strip()
    ci = [line.strip() for line in (repo / ".ci/run").read_text().splitlines()]
    assert block in ci, f"README's test command {block!r} is not what .ci/run runs"
