"""The bundle files' copies of the shared settings agree (configs/README.md says why MONAI needs copies)."""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
MEDMNIST_BUNDLES = ("pneumoniamnist", "bloodmnist", "dermamnist", "retinamnist")
# the only keys in which one MedMNIST bundle's file may differ from another's
PER_DATASET = {
    "train.json": {"flag", "epochs", "warmup_epochs", "batch_size", "learning_rate", "beta"},
    "evaluate.json": {"flag"},
    "inference.json": {"flag"},
}
# keys a bundle's workflows hold differently by design: the training settings, the workflow steps, comments
PER_WORKFLOW = {"training", "initialize", "run", "_comment"}
# the latent bundle's evaluation runs 224 px images through a VAE: smaller batches
LATENT_OWN_EVALUATION = {"batch_size"}
_MISSING = object()


def read(bundle: str, name: str) -> dict[str, Any]:
    """The JSON of ``bundles/<bundle>/<name>`` as written (macros unresolved)."""
    return json.loads((REPO / "bundles" / bundle / name).read_text())


def differing_keys(a: dict[str, Any], b: dict[str, Any], ignore: Collection[str] = ()) -> list[str]:
    """Keys of ``a`` or ``b`` (one level, ``ignore`` left out) whose values differ or that only one has."""
    return sorted(k for k in (a.keys() | b.keys()) - set(ignore) if a.get(k, _MISSING) != b.get(k, _MISSING))


@pytest.mark.parametrize("name", sorted(PER_DATASET))
def test_medmnist_bundles_differ_only_in_their_per_dataset_values(name: str) -> None:
    reference = read(MEDMNIST_BUNDLES[0], name)
    for bundle in MEDMNIST_BUNDLES[1:]:
        keys = differing_keys(read(bundle, name), reference, PER_DATASET[name])
        assert not keys, f"bundles/{bundle}/{name} differs from bundles/{MEDMNIST_BUNDLES[0]}/{name} in {keys}"


@pytest.mark.parametrize("bundle", [*MEDMNIST_BUNDLES, "latent"])
def test_a_bundles_workflows_agree_on_the_settings_they_share(bundle: str) -> None:
    train = read(bundle, "train.json")
    for name in ("evaluate.json", "inference.json"):
        if not (REPO / "bundles" / bundle / name).is_file():
            continue
        other = read(bundle, name)
        shared = train.keys() & other.keys()
        keys = differing_keys({k: train[k] for k in shared}, {k: other[k] for k in shared}, PER_WORKFLOW)
        assert not keys, f"bundles/{bundle}/{name} and train.json hold different {keys}"
        assert other["training"] == {}, f"bundles/{bundle}/{name}: training is there only for configs/cpu.json"


def test_the_latent_bundle_trains_and_evaluates_with_the_shared_settings() -> None:
    latent, medmnist = read("latent", "train.json"), read(MEDMNIST_BUNDLES[0], "train.json")
    assert latent["training"] == medmnist["training"]
    keys = differing_keys(latent["evaluation"], medmnist["evaluation"], LATENT_OWN_EVALUATION)
    assert not keys, f"bundles/latent/train.json evaluation differs in {keys}"
