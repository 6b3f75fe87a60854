"""The bundle files' copies of the shared settings agree (configs/README.md says why MONAI needs copies)."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Collection, Iterator
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
# the classification bundles' decoupled times (the segmentation bundles train with coupled times only); the
# first is also in their evaluate.json / inference.json, as the network it gives has a second time input
DECOUPLED_TIME = ("time_decoupled",)
CLASSIFICATION_ONLY_TRAINING = {"time_decoupled", "time_decoupled_modes"}
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


@pytest.mark.parametrize("bundle", [*MEDMNIST_BUNDLES, "latent", "celebamask_hq", "cocostuff"])
def test_a_bundles_workflows_agree_on_the_settings_they_share(bundle: str) -> None:
    train = read(bundle, "train.json")
    for name in ("evaluate.json", "inference.json"):
        if not (REPO / "bundles" / bundle / name).is_file():
            continue
        other = read(bundle, name)
        shared = train.keys() & other.keys()
        keys = differing_keys({k: train[k] for k in shared}, {k: other[k] for k in shared}, PER_WORKFLOW)
        assert not keys, f"bundles/{bundle}/{name} and train.json hold different {keys}"
        # training is there for configs/cpu.json and for the one training setting that shapes the network
        network_shaping = {k: train["training"][k] for k in DECOUPLED_TIME if k in train["training"]}
        assert other["training"] == network_shaping, f"bundles/{bundle}/{name}: training holds only {sorted(network_shaping)}"


def test_the_latent_bundle_trains_and_evaluates_with_the_shared_settings() -> None:
    latent, medmnist = read("latent", "train.json"), read(MEDMNIST_BUNDLES[0], "train.json")
    assert latent["training"] == medmnist["training"]
    keys = differing_keys(latent["evaluation"], medmnist["evaluation"], LATENT_OWN_EVALUATION)
    assert not keys, f"bundles/latent/train.json evaluation differs in {keys}"


def read_config(name: str) -> dict[str, Any]:
    """The JSON of ``configs/<name>`` as written."""
    return json.loads((REPO / "configs" / name).read_text())


# the pieces of the segmentation training workflow that are the classification workflow's, key for key
SHARED_TRAIN_PIECES = (
    "optimizer", "lr_scheduler", "ema", "loss", "path", "save_dict", "handlers", "prepared_network", "network",
    "main_process_handlers", "stop_on_signal", "checkpoint_saver", "resume_from", "checkpoint_loader",
    "checkpoint_handlers",
)


def test_the_segmentation_workflow_shares_the_classification_workflows_training_pieces() -> None:
    seg, cls = read_config("segmentation_train.json"), read_config("train.json")
    keys = [k for k in SHARED_TRAIN_PIECES if seg["train"][k] != cls["train"][k]]
    assert not keys, f"configs/segmentation_train.json train#{keys} differ from configs/train.json's"
    # the classification sampler adds the decoupled rows to the segmentation one's coupled schedule
    decoupled = {"decoupled", "decoupled_modes"}
    assert {k: v for k, v in cls["train"]["time_sampler"].items() if k not in decoupled} == seg["train"]["time_sampler"]
    # the same handlers, except that the epoch seed also re-seeds the random crops and flips
    seg_handlers, cls_handlers = seg["train"]["base_handlers"], cls["train"]["base_handlers"]
    assert seg_handlers[1:] == cls_handlers[1:]
    assert {k: v for k, v in seg_handlers[0].items() if k != "transforms"} == cls_handlers[0]
    # best.pt is kept on the dataset's validation metric: without background for CelebAMask-HQ, all classes for COCO-Stuff
    assert seg["validate"]["checkpoint_saver"]["key_metric_name"] == "@common#key_metric"
    assert read_config("celebamask_hq.json")["common"]["key_metric"] == "val_miou_no_background_1steps"
    assert read_config("cocostuff.json")["common"]["key_metric"] == "val_miou_1steps"
    # both workflows end initialize with train#prepare, which configs/multi_gpu_train.json runs after the process group
    for config in (seg, cls):
        assert config["initialize"][-1] == "@train#prepare"
    assert read_config("multi_gpu_train.json")["initialize"][-1] == "@train#prepare"


def test_the_segmentation_bundles_and_their_cpu_recipe_use_the_shared_settings() -> None:
    train, medmnist = read("celebamask_hq", "train.json"), read(MEDMNIST_BUNDLES[0], "train.json")
    # its training settings are the classification bundles', minus class balancing and validation runs, plus its own defaults
    own = {"x_weight", "val_interval", "augment", "val_runs", "latent_cache", "latent_mask_draws"} | CLASSIFICATION_ONLY_TRAINING
    keys = differing_keys(train["training"], medmnist["training"], own)
    assert not keys, f"bundles/celebamask_hq/train.json training differs from the MedMNIST bundles' in {keys}"
    assert train["training"]["x_weight"] == 0.7  # the authors' weighting of the image half
    for bundle in ("celebamask_hq", "cocostuff"):  # the recipe only sets keys each bundle has
        train = read(bundle, "train.json")
        for key in read_config("segmentation_cpu.json"):
            if key.startswith("_"):
                continue
            section, _, sub = key.partition("#")
            assert section in train and (not sub or sub in train[section]), f"configs/segmentation_cpu.json sets {key}, not a key of bundles/{bundle}"


# the values in which bundles/cocostuff may differ from bundles/celebamask_hq: its dataset file and dataset settings
COCOSTUFF_OWN = {"imports", "common", "code_kind", "beta"}
# the dataset facts of a segmentation dataset file's common section; every other key is the same in both files
SEGMENTATION_DATASET_FACTS = {"flag", "class_names", "ignore_index", "background", "key_metric", "flip_swap", "pairs", "label_values"}


@pytest.mark.parametrize("name", ["train.json", "evaluate.json", "inference.json"])
def test_the_cocostuff_bundle_is_the_celebamask_bundle_with_its_own_dataset(name: str) -> None:
    coco, celeba = read("cocostuff", name), read("celebamask_hq", name)
    keys = differing_keys(coco, celeba, COCOSTUFF_OWN | {"evaluation"})
    assert not keys, f"bundles/cocostuff/{name} differs from bundles/celebamask_hq/{name} in {keys}"
    # COCO-Stuff is evaluated on val (COCO's test labels are not public; its official layout has no test split)
    assert differing_keys(coco["evaluation"], celeba["evaluation"], {"split"}) == [] and coco["evaluation"]["split"] == "val"
    assert coco["common"] == "%configs/cocostuff.json#common" and coco["imports"] == "%configs/cocostuff.json#imports"
    assert (coco["code_kind"], coco["beta"]) == ("palette", 6.0)  # the 6-level grid and the authors' beta


def test_the_segmentation_dataset_files_differ_only_in_dataset_facts() -> None:
    coco, celeba = read_config("cocostuff.json"), read_config("celebamask_hq.json")
    assert coco["imports"] == celeba["imports"]
    keys = differing_keys(coco["common"], celeba["common"], SEGMENTATION_DATASET_FACTS | {"label_check"})
    assert not keys, f"configs/cocostuff.json common differs from configs/celebamask_hq.json's in {keys}"
    assert differing_keys(coco["common"]["label_check"], celeba["common"]["label_check"], {"what"}) == []
    assert (coco["common"]["background"], celeba["common"]["background"]) == (None, 0)
    assert coco["common"]["flip_swap"] == {}  # COCO-Stuff has no left/right classes: a plain flip


def _trainers(node: Any) -> list[dict[str, Any]]:
    """Every config dict below ``node`` that declares a ``key_train_metric``."""
    if isinstance(node, dict):
        found = [node] if "key_train_metric" in node else []
        return found + [t for v in node.values() for t in _trainers(v)]
    if isinstance(node, list):
        return [t for v in node for t in _trainers(v)]
    return []


@pytest.mark.parametrize("path", ["configs/train.json", "configs/segmentation_train.json", "bundles/latent/vae_train.json"])
def test_a_loss_as_the_key_training_metric_counts_lower_as_better(path: str) -> None:
    # MONAI's default comparison keeps the larger value: an epoch-mean loss would log its worst epoch as the best
    trainers = _trainers(json.loads((REPO / path).read_text()))
    assert trainers and all("loss" in next(iter(t["key_train_metric"])) for t in trainers)
    for trainer in trainers:
        better = eval(trainer["metric_cmp_fn"].lstrip("$"))  # noqa: S307 - the config's own lambda
        assert better(0.5, 1.0) and not better(1.0, 0.5)


@pytest.mark.parametrize("bundle", ["celebamask_hq", "cocostuff"])
def test_the_paper_setting_is_the_released_codes_latent_model(bundle: str) -> None:
    # the authors' SymmFlow settings (../shared/DESIGN.md, "Natural images"); the overlays only set keys the bundle has
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(REPO / "bundles" / bundle / "train.json"), str(REPO / "configs" / "segmentation_latent.json"),
                        str(REPO / "configs" / "segmentation_paper.json")])
    train = read(bundle, "train.json")
    for name in ("segmentation_latent.json", "segmentation_paper.json"):
        for key in read_config(name):
            section, _, sub = key.partition("#")
            assert key.startswith("_") or (section in train and (not sub or sub in train[section])), f"configs/{name} sets {key}"
    settings = {k: parser.get(k) for k in ("size", "net_preset", "epochs", "warmup_epochs", "batch_size", "learning_rate", "vae")}
    assert settings == {"size": 512, "net_preset": "sd21", "epochs": 200, "warmup_epochs": 10, "batch_size": 32,
                        "learning_rate": 8e-5, "vae": "stabilityai/sd-vae-ft-mse"}
    assert (parser.get("training#x_weight"), parser.get("training#weight_decay"), parser.get("training#ema_decay")) == (0.7, 0.0, 0.9999)
    assert (parser.get("code_kind"), parser.get("beta")) == {"celebamask_hq": ("celebamask", 10.0), "cocostuff": ("palette", 6.0)}[bundle]
    assert parser.get("training#autocast") == "auto" and 25 in parser.get("evaluation#steps")


@contextlib.contextmanager
def _parsed(files: list[str], overrides: dict[str, Any]) -> Iterator[Any]:
    """A ConfigParser of the repository files ``files`` with ``overrides``, parsed and used from the repository root."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    cwd = os.getcwd()
    os.chdir(REPO)  # the %configs/... macros are relative to the repository root
    try:
        parser.read_config([str(REPO / f) for f in files])
        parser.update(overrides)
        parser.parse()
        yield parser
    finally:
        os.chdir(cwd)


def test_time_decoupled_alone_gives_a_decoupled_network_sampler_and_run_identity() -> None:
    from medsymmflow.networks import is_decoupled

    overrides = {"net_preset": "tiny", "device": "cpu", "training#time_decoupled": 0.5}
    with _parsed(["bundles/pneumoniamnist/train.json", "configs/cpu.json"], overrides) as parser:
        sampler = parser.get_parsed_content("train#time_sampler")
        assert sampler.decoupled == 0.5 and sampler.decoupled_modes == (1 / 3, 1 / 3, 1 / 3)
        assert sampler.schedule == "mixture" and sampler.p_one == 0.5  # the recipe's coupled rows are kept
        assert is_decoupled(parser.get_parsed_content("common#network"))
        trained = parser.get_parsed_content("common#run_info")
        assert trained.state_dict()["decoupled_time"] is True
    # the default is the paper's coupled path, and its run identity refuses the decoupled checkpoint
    evaluate = ["bundles/pneumoniamnist/evaluate.json", "configs/cpu.json"]
    with _parsed(evaluate, {"net_preset": "tiny", "device": "cpu"}) as parser:
        assert not is_decoupled(parser.get_parsed_content("common#network"))
        with pytest.raises(ValueError, match="decoupled_time: checkpoint True vs this run False.*training#time_decoupled > 0"):
            parser.get_parsed_content("common#run_info").load_state_dict(trained.state_dict())
    # evaluate.json takes the same setting and builds the network the checkpoint holds
    with _parsed(evaluate, overrides) as parser:
        assert is_decoupled(parser.get_parsed_content("evaluate#network"))
        parser.get_parsed_content("common#run_info").load_state_dict(trained.state_dict())
