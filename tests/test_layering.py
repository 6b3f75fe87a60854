"""Imports run one way: a medsymmflow module imports only modules of its own layer or of a lower one.

Every ``import`` / ``from ... import`` of every module is read with ``ast`` (those inside functions and
``TYPE_CHECKING`` blocks too: a lazy import still ties the lower layer to the higher one), each
medsymmflow module is mapped to a layer by :data:`LAYERS` (the longest matching name wins) and an import
of a higher layer fails the test, naming both modules and both layers. docs/method.md ("Import layers")
lists the same table; a test keeps the two equal.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "medsymmflow"
DOC = ROOT / "docs" / "method.md"

# layer -> (name, the modules or packages it holds); a package entry covers its submodules.
LAYERS: dict[int, tuple[str, tuple[str, ...]]] = {
    # foundations: import nothing of medsymmflow but each other.
    #   medsymmflow (the package __init__: the codebook only, so `import medsymmflow` stays light),
    #   errors (one-line error reporting), checks (argument validators), io (atomic writes, weights-only
    #   checkpoint loading and the run identity, uint8 <-> float images, the raster reader), codes (class
    #   codebooks), precision (autocast dtypes, used by inferers, trainer and baseline alike)
    0: ("foundations", (
        "medsymmflow", "medsymmflow.errors", "medsymmflow.checks", "medsymmflow.io", "medsymmflow.codes",
        "medsymmflow.precision",
    )),
    # building blocks: data (MedMNIST arrays, image files, samplers), MONAI transforms, the flow path /
    # loss / solver, the networks (the VAE codec loads its file through io)
    1: ("building blocks", ("medsymmflow.data", "medsymmflow.transforms", "medsymmflow.flow", "medsymmflow.networks")),
    # inference: the inferers (classify and sample with a network, one ODE solve per call) and ood (the
    # velocity-prediction error of images under a network, an out-of-distribution score)
    2: ("inference", ("medsymmflow.inferers", "medsymmflow.ood")),
    # metrics: pure functions and torchmetrics classes over the arrays, images and classifiers they are
    # given; they never load checkpoints, generate or train
    3: ("metrics", ("medsymmflow.metrics",)),
    # reports: tables and figures built from metrics (the predictions table)
    4: ("reports", ("medsymmflow.reports",)),
    # checkpoint applications: generation (checkpoint -> generator, images per class, PNGs, montages),
    # generation_metrics (FID / CAS of generated images per step count, generation_metrics.json),
    # deploy (checkpoint -> TorchScript classifier, through generation's loader), synthesis (checkpoint +
    # label maps -> synthesised images, FID / KID / diversity / mask consistency, synthesis_metrics.json)
    5: ("generation", (
        "medsymmflow.generation", "medsymmflow.generation_metrics", "medsymmflow.deploy", "medsymmflow.synthesis",
    )),
    # engines: MONAI Trainer / Evaluator subclasses and their handlers; baselines (the ResNet-18 trains
    # through the same engine stack and writes the same report)
    6: ("engines", ("medsymmflow.engines", "medsymmflow.baselines")),
    # entry points: console commands and the `medsymmflow` script (thin wrappers), and settings (the bundle
    # boundary that checks overrides with the validators and choices of every layer below)
    7: ("entry points", ("medsymmflow.commands", "medsymmflow.cli", "medsymmflow.settings")),
}


def module_name(path: Path) -> str:
    """``medsymmflow/metrics/fid.py`` -> ``medsymmflow.metrics.fid``; a package's ``__init__.py`` -> the package."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    """Every module of the package by dotted name."""
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int | None:
    """The layer of the longest :data:`LAYERS` entry that is ``module`` or a package above it; None when none is."""
    best: tuple[int, int] | None = None
    for layer, (_, names) in LAYERS.items():
        for name in names:
            if (module == name or module.startswith(name + ".")) and (best is None or len(name) > best[0]):
                best = (len(name), layer)
    return None if best is None else best[1]


def imports_of(source: str, name: str, is_package: bool, modules: set[str]) -> list[tuple[int, str]]:
    """``(line, module)`` for every medsymmflow module the source of module ``name`` imports, anywhere in it."""
    package = name if is_package else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: one level is the module's own package
                parts = package.split(".")
                target = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                # `from medsymmflow import errors` imports the module medsymmflow.errors
                sub = f"{target}.{alias.name}"
                found.append((node.lineno, sub if sub in modules else target))
    return [(line, m) for line, m in dict.fromkeys(found) if m == "medsymmflow" or m.startswith("medsymmflow.")]


def upward_imports(sources: dict[str, tuple[str, bool, str]]) -> list[str]:
    """One line per import of a higher layer, naming the importing module, the imported one and both layers.

    ``sources``: module name -> (source text, whether it is a package's ``__init__``, where it lives).
    """
    problems = []
    for name, (source, is_package, where) in sources.items():
        own = layer_of(name)
        for line, target in imports_of(source, name, is_package, set(sources)):
            theirs = layer_of(target)
            if own is not None and theirs is not None and theirs > own:
                problems.append(
                    f"{name} (layer {own}, {LAYERS[own][0]}) imports {target} (layer {theirs}, {LAYERS[theirs][0]}) "
                    f"at {where}:{line}"
                )
    return problems


def package_sources() -> dict[str, tuple[str, bool, str]]:
    """:func:`upward_imports`' input for the package as it is on disk."""
    return {
        name: (path.read_text(), path.name == "__init__.py", str(path.relative_to(ROOT)))
        for name, path in all_modules().items()
    }


def test_every_module_has_a_layer() -> None:
    missing = [name for name in all_modules() if layer_of(name) is None]
    assert not missing, f"modules without a layer (add them to LAYERS in tests/test_layering.py and docs/method.md): {missing}"


def test_imports_run_one_way() -> None:
    problems = upward_imports(package_sources())
    assert not problems, "imports that run back up the layering:\n" + "\n".join(problems)


def test_a_lazy_or_relative_upward_import_is_named() -> None:
    # the checker itself, on the kinds of import the package had: inside a function, relative, `from pkg import mod`
    sources = {
        "medsymmflow.networks.latent": ("def load():\n    from medsymmflow.engines.handlers import load_checkpoint\n", False, "latent.py"),
        "medsymmflow.metrics.fid": ("import torch\n\nfrom ..generation import to_float_images\n", False, "fid.py"),
        "medsymmflow.metrics": ("from . import fid\nfrom medsymmflow import io\n", True, "metrics/__init__.py"),
        "medsymmflow.inferers": ("from medsymmflow import engines\n", False, "inferers.py"),
        "medsymmflow.engines": ("from medsymmflow.metrics import fid\n", True, "engines/__init__.py"),
        "medsymmflow.generation": ("", False, "generation.py"),
        "medsymmflow.io": ("", False, "io.py"),
    }
    assert sorted(upward_imports(sources)) == [
        "medsymmflow.inferers (layer 2, inference) imports medsymmflow.engines (layer 6, engines) at inferers.py:1",
        "medsymmflow.metrics.fid (layer 3, metrics) imports medsymmflow.generation (layer 5, generation) at fid.py:3",
        (
            "medsymmflow.networks.latent (layer 1, building blocks) imports medsymmflow.engines.handlers "
            "(layer 6, engines) at latent.py:2"
        ),
    ]


def documented_layers() -> dict[int, tuple[str, ...]]:
    """The numbered list of docs/method.md's "Import layers" section: layer -> module names in backticks."""
    text = DOC.read_text()
    section = text.split("## Import layers", 1)
    if len(section) < 2:
        pytest.fail(f"{DOC.relative_to(ROOT)} has no '## Import layers' section")
    body = section[1].split("\n## ", 1)[0]
    layers = {}
    for number, rest in re.findall(r"^(\d+)\. (.*)$", body, flags=re.MULTILINE):
        names = re.findall(r"`(medsymmflow[\w.]*)`", rest.split(":", 1)[0])
        layers[int(number)] = tuple(names)
    return layers


def test_docs_list_the_same_layers() -> None:
    assert documented_layers() == {layer: names for layer, (_, names) in LAYERS.items()}
