"""Evaluation under torch.distributed: two gloo processes on the CPU reach exactly the single-process numbers.

Each rank evaluates its shard of the split (``medsymmflow.data.evaluation_sampler``: MONAI's DistributedSampler
without padding), the reports sum the confusion matrices and gather the per-sample rows, each image's noise is
seeded by its position in the split, and rank 0 alone writes the tables. The module spawns the two ranks once
(``torch.multiprocessing.start_processes`` with fork, a free local port) and compares them with one in-process run of the same
untrained tiny networks on the same synthetic data: only equality matters, not accuracy.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

N, SIZE, CLASSES, BATCH = 5, 16, 4, 2  # 5 images over 2 ranks: shards of 3 and 2, so the shards differ in length
SEED = 5


def _segmentation_items(data: Path) -> list[dict[str, Any]]:
    from medsymmflow.data import celebamask_hq_dicts

    items = []
    for pair in celebamask_hq_dicts(data, "all"):
        image = np.asarray(Image.open(pair["image"]).convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0
        label = np.asarray(Image.open(pair["label"]), dtype=np.float32)[None]
        items.append({"image": torch.from_numpy(image), "label": torch.from_numpy(label), "id": pair["id"]})
    return items


def _classification_items() -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(1)
    return [
        {"image": torch.rand(1, 8, 8, generator=g) * 2 - 1, "label": torch.tensor([i % 3]), "index": torch.tensor(i)}
        for i in range(N)
    ]


@contextlib.contextmanager
def _recording_writes(written: list[str]) -> Iterator[None]:
    """Record the path of every file the segmentation handlers and reports write."""
    import medsymmflow.engines.report as report
    import medsymmflow.engines.segmentation_writer as writer
    import medsymmflow.reports.predictions as predictions
    import medsymmflow.reports.segmentation as segmentation

    patched = [(writer, "write_png"), (writer, "atomic_write"), (segmentation, "atomic_write"), (report, "atomic_write"),
               (predictions, "atomic_write")]
    originals = [getattr(module, name) for module, name in patched]

    def recorder(original: Any) -> Any:
        def write(path: Any, *args: Any, **kwargs: Any) -> Any:
            written.append(str(path))
            return original(path, *args, **kwargs)
        return write

    for (module, name), original in zip(patched, originals):
        setattr(module, name, recorder(original))
    try:
        yield
    finally:
        for (module, name), original in zip(patched, originals):
            setattr(module, name, original)


def _evaluate(data: Path, out: Path) -> dict[str, Any]:
    """Segment and classify the synthetic split in this process (its shard of it under a process group)."""
    from medsymmflow import ClassCodebook
    from medsymmflow.data import evaluation_sampler
    from medsymmflow.engines import (
        ClassificationReport,
        SegmentationMontage,
        SegmentationReport,
        SegmentationWriter,
        SymmFlowEvaluator,
        SymmFlowSegmentationEvaluator,
    )
    from medsymmflow.inferers import SymmFlowClassifier, SymmFlowSegmenter
    from medsymmflow.networks import build_network

    torch.set_num_threads(1)  # the same reduction order in the single process and in each rank
    written: list[str] = []
    items = _segmentation_items(data)
    loader = DataLoader(items, batch_size=BATCH, shuffle=False, sampler=evaluation_sampler(items))
    codebook = ClassCodebook.palette(CLASSES)
    torch.manual_seed(0)
    net = build_network("tiny", 3, codebook.channels).eval()
    evaluator = SymmFlowSegmentationEvaluator(
        "cpu", loader, net, SymmFlowSegmenter(codebook, num_draws=2), steps=[1, 2], seed=SEED,
    )
    report = SegmentationReport(out / "segmentation", CLASSES, ignore_index=255, background=0)
    handlers = [report, SegmentationMontage(out / "segmentation" / "montage.png", codebook, rows=4),
                SegmentationWriter(out / "segmentation" / "pngs", codebook)]
    for handler in handlers:
        handler.attach(evaluator)

    citems = _classification_items()
    cloader = DataLoader(citems, batch_size=BATCH, shuffle=False, sampler=evaluation_sampler(citems))
    cbook = ClassCodebook.palette(3)
    torch.manual_seed(0)
    cnet = build_network("tiny", 1, cbook.channels).eval()
    classifier = SymmFlowEvaluator("cpu", cloader, cnet, SymmFlowClassifier(cbook, num_draws=2), num_runs=2, seed=SEED,
                                   noise="sample")
    creport = ClassificationReport(out / "classification")
    creport.attach(classifier)

    with _recording_writes(written):
        evaluator.run()
        classifier.run()
    return {
        "shards": evaluator.shards,
        "samples": [int(i) for i in loader.sampler],
        "iterations": evaluator.state.iteration,
        "state_metrics": dict(evaluator.state.metrics),
        "results": report.results,
        "confusion": {str(s): m.confusion_matrix.tolist() for s, m in report._metrics.items()},
        "classification": creport.results,
        "written": [str(Path(p).relative_to(out)) for p in written],
    }


def _worker(rank: int, world: int, port: int, data: str, out: str) -> None:
    import torch.distributed as dist

    # a short timeout: a collective that only one rank enters fails the test instead of hanging it
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60)
    )
    try:
        result = _evaluate(Path(data), Path(out))
        from medsymmflow.engines.distributed import evaluation_shards

        items = list(range(N))
        refused = ""
        try:  # torch's own sampler pads the 5 samples to 6: refused, it would count one image twice
            evaluation_shards(DataLoader(items, sampler=torch.utils.data.DistributedSampler(items, shuffle=False)))
        except ValueError as err:
            refused = str(err)
        result["padding_refused"] = refused
        if rank == 0:  # what rank 0 computes alone (the synthesis metrics) must not wait for the other rank
            from medsymmflow.metrics.synthesis import fid_kid_of_features

            g = torch.Generator().manual_seed(0)
            scores = fid_kid_of_features(torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g), kid_subsets=2)
            result["fid_alone"] = float(scores["fid"])
        dist.barrier()
        (Path(out).parent / f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from medsymmflow.data import write_synthetic_segmentation

    root = tmp_path_factory.mktemp("distributed")
    data = write_synthetic_segmentation(root / "data", n=N, size=SIZE, num_classes=CLASSES, seed=0)
    threads = torch.get_num_threads()
    try:
        single = _evaluate(data, root / "single")
    finally:
        torch.set_num_threads(threads)
    # fork: the ranks start with this process's imports instead of importing torch, MONAI and the package again
    torch.multiprocessing.start_processes(
        _worker, args=(2, _free_port(), str(data), str(root / "ddp" / "out")), nprocs=2, join=True, start_method="fork"
    )
    ranks = [json.loads((root / "ddp" / f"rank{r}.json").read_text()) for r in range(2)]
    return {"single": single, "ranks": ranks, "single_dir": root / "single", "ddp_dir": root / "ddp" / "out"}


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_two_ranks_evaluate_disjoint_shards_and_reach_the_single_process_metrics(runs: dict[str, Any]) -> None:
    single, ranks = runs["single"], runs["ranks"]
    assert single["shards"] is None and [r["shards"] for r in ranks] == [[2, 0], [2, 1]]
    # disjoint shards covering the split, no sample twice; fewer batches per rank than one process needs
    assert [r["samples"] for r in ranks] == [[0, 2, 4], [1, 3]]
    assert [r["iterations"] for r in ranks] == [2, 1] and single["iterations"] == 3
    for rank in ranks:
        # the confusion matrices summed over the ranks, the per-image rows gathered in the split's order
        assert rank["confusion"] == single["confusion"]
        assert rank["results"] == single["results"]
        assert rank["state_metrics"] == single["state_metrics"]
        assert rank["classification"] == single["classification"]
    by_steps = single["results"]["by_steps"]["1"]
    assert by_steps["num_images"] == N and by_steps["labelled_pixels"] == N * SIZE * SIZE
    assert "pads the shards with repeated samples (6 for 5)" in ranks[0]["padding_refused"]
    assert ranks[0]["fid_alone"] >= 0.0


@pytest.mark.slow
def test_two_ranks_write_every_file_once_and_the_same_bytes_as_one_process(runs: dict[str, Any]) -> None:
    single, ranks = runs["single"], runs["ranks"]
    written = [path for rank in ranks for path in rank["written"]]
    assert len(written) == len(set(written)), "a file was written twice"
    assert sorted(written) == sorted(single["written"])
    pngs = [{p for p in rank["written"] if p.startswith("segmentation/pngs/") and p.endswith(".png")} for rank in ranks]
    # each rank writes the PNGs of its own images, named by image id: 3 PNGs per image
    assert len(pngs[0]) == 3 * 3 and len(pngs[1]) == 3 * 2 and not pngs[0] & pngs[1]
    assert "segmentation/pngs/label_maps/synthetic_1.png" in pngs[1]
    # the tables, the montage and the listings come from rank 0 alone
    assert set(ranks[1]["written"]) == pngs[1]
    assert {"segmentation/segmentation_metrics.json", "segmentation/segmentation_per_image.csv",
            "segmentation/montage.png", "classification/metrics.json", "classification/predictions.csv"} <= set(ranks[0]["written"])
    one, two = _files(runs["single_dir"]), _files(runs["ddp_dir"])
    assert sorted(one) == sorted(two)
    for name in one:
        # the listing names the PNGs by their full paths, under each run's own folder
        expected = one[name].replace(str(runs["single_dir"]).encode(), str(runs["ddp_dir"]).encode())
        assert two[name] == expected, f"{name} differs from the single-process run's"


def test_noise_and_per_image_rows_do_not_depend_on_the_batch_size(tmp_path: Path) -> None:
    """One process: batches of 2 and of 5 give every image the same noise, so the same per-image table."""
    from medsymmflow import ClassCodebook
    from medsymmflow.engines import SegmentationReport, SymmFlowSegmentationEvaluator
    from medsymmflow.engines.distributed import interleave
    from medsymmflow.inferers import SymmFlowSegmenter
    from medsymmflow.networks import build_network

    assert interleave([[0, 2, 4], [1, 3]]) == [0, 1, 2, 3, 4] and interleave([]) == []
    g = torch.Generator().manual_seed(0)
    items = [{"image": torch.rand(3, 8, 8, generator=g) * 2 - 1, "label": torch.randint(0, 3, (1, 8, 8), generator=g).float(),
              "id": f"im{i}"} for i in range(5)]
    codebook = ClassCodebook.palette(3)
    torch.manual_seed(0)
    net = build_network("tiny", 3, 3).eval()
    tables = []
    for batch in (2, 5):
        evaluator = SymmFlowSegmentationEvaluator("cpu", DataLoader(items, batch_size=batch), net, SymmFlowSegmenter(codebook, steps=1), seed=3)
        report = SegmentationReport(tmp_path / str(batch), 3)
        report.attach(evaluator)
        evaluator.run()
        assert evaluator.state.output["position"] == ([4] if batch == 2 else [0, 1, 2, 3, 4])
        tables.append((tmp_path / str(batch) / "segmentation_per_image.csv").read_text())
        per_image = report._metrics[1].per_image
    assert tables[0] == tables[1]
    assert len({round(r["uncertainty"], 12) for r in per_image}) == 5  # not one noise draw shared by all images


def test_the_multi_gpu_evaluation_overlay_runs_the_workflows_own_preparation() -> None:
    """configs/multi_gpu_evaluate.json replaces initialize: it must end with the steps both evaluation workflows run."""
    configs = Path(__file__).resolve().parents[1] / "configs"
    overlay = json.loads((configs / "multi_gpu_evaluate.json").read_text())
    assert overlay["initialize"][-1] == "@evaluate#prepare"
    assert overlay["initialize"][:2] == ["$medsymmflow.errors.install_excepthook()", "$medsymmflow.settings.check_command_line()"]
    for name, loaders in (("evaluate.json", ("evaluate", "selective")), ("segmentation_evaluate.json", ("evaluate",))):
        workflow = json.loads((configs / name).read_text())
        assert workflow["initialize"] == overlay["initialize"][:2] + ["@evaluate#prepare"], name
        for section in loaders:  # every evaluation loader shards under torchrun, and only then
            assert workflow[section]["dataloader"]["sampler"].startswith("$medsymmflow.data.evaluation_sampler("), (name, section)
    assert json.loads((configs / "segmentation_train.json").read_text())["validate"]["dataloader"]["sampler"] == (
        "$medsymmflow.data.evaluation_sampler(@validate#dicts)"
    )
