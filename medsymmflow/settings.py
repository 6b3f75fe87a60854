"""The bundle boundary: command-line overrides and settings are checked before a bundle does any work.

The workflows in ``configs/`` call these functions as their first ``initialize`` expressions:

* :func:`check_command_line` refuses an override that names no key of the bundle's config files
  (MONAI would add ``--epoch 3`` as a new, unused key and train 1000 epochs) and suggests the nearest
  keys; the same message replaces MONAI's ``KeyError`` for a misspelled section (``--trainng#val_interval``),
  which MONAI raises while applying the overrides, before any expression runs: the bundles'
  ``logging.conf`` names :class:`BundleLogFormatter`, which arms it when MONAI reads the logging setup.
* :func:`check_settings` checks every plain setting against :data:`RULES` (the validators of
  :mod:`medsymmflow.checks` and the choices the library objects accept), so ``--evaluation#steps 0``
  fails before the first epoch, not after the training.
* :func:`clean_up_on_failure` makes a run that fails remove the empty TensorBoard files and empty
  folders it created.
"""

from __future__ import annotations

import ast
import difflib
import os
import struct
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medsymmflow import errors
from medsymmflow.checks import (
    available_device,
    boolean,
    fraction,
    nonnegative_float,
    nonnegative_int,
    one_of,
    output_folder,
    positive_float,
    positive_int,
)
from medsymmflow.codes import SCORES
from medsymmflow.data.medmnist import MEDMNIST_SPLITS
from medsymmflow.flow.guidance import check_guidance_scale
from medsymmflow.flow.loss import check_decoupled_modes
from medsymmflow.flow.solver import FIXED_STEP_METHODS, check_method
from medsymmflow.inferers import INFERER_DECISIONS, TIME_COUPLINGS
from medsymmflow.metrics.synthesis import LPIPS_NETS
from medsymmflow.precision import resolve_autocast

__all__ = [
    "RULES",
    "SEGMENTATION_RULES",
    "RUN_ARGUMENTS",
    "BundleCommand",
    "BundleLogFormatter",
    "check_command_line",
    "check_settings",
    "clean_up_on_failure",
    "parse_bundle_command",
    "unknown_overrides",
]

# keyword arguments of monai.bundle.scripts.run / create_workflow / ConfigWorkflow: not config overrides
RUN_ARGUMENTS = (
    "config_file", "meta_file", "logging_file", "run_id", "init_id", "final_id", "tracking", "args_file",
    "workflow_name", "workflow_type", "properties_path",
)


def _named(check: Callable[[Any], Any]) -> Callable[[Any, str], Any]:
    """A rule from a one-argument check whose message does not name the setting: its ValueError, prefixed with the name."""

    def rule(value: Any, name: str) -> Any:
        try:
            check(value)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
        return value

    return rule


_autocast = _named(resolve_autocast)


def _choice(choices: Sequence[str]) -> Callable[[Any, str], Any]:
    return lambda value, name: one_of(value, choices, name)


# setting -> validator(value, name): the same checks and choices the objects fed by the setting apply
RULES: dict[str, Callable[[Any, str], Any]] = {
    "epochs": positive_int,
    "warmup_epochs": nonnegative_int,
    "batch_size": positive_int,
    "learning_rate": positive_float,
    "seed": nonnegative_int,
    "device": available_device,
    "output_dir": output_folder,
    "download": boolean,
    "balanced": boolean,
    "resume": boolean,
    "multi_gpu": boolean,
    "classify": boolean,
    "training#weight_decay": nonnegative_float,
    "training#val_interval": positive_int,
    "training#val_runs": positive_int,
    "training#save_interval": positive_int,
    "training#num_workers": nonnegative_int,
    "training#scale_batches": positive_int,
    "training#autocast": _autocast,
    "training#channels_last": boolean,
    "training#compile": boolean,
    "training#ema_warmup": boolean,
    "training#plan_epochs": boolean,
    "training#augment": boolean,
    "training#evaluate_after_training": boolean,
    "training#time_decoupled": fraction,
    "training#time_decoupled_modes": _named(check_decoupled_modes),
    "evaluation#split": _choice(MEDMNIST_SPLITS),
    "evaluation#steps": positive_int,
    "evaluation#method": check_method,
    "evaluation#draws": positive_int,
    "evaluation#decision": _choice(INFERER_DECISIONS),
    "evaluation#autocast": _autocast,
    "evaluation#runs": positive_int,
    "evaluation#temperature": positive_float,
    "evaluation#score": _choice(SCORES),
    "evaluation#batch_size": positive_int,
    "evaluation#selective": boolean,
    "evaluation#time_coupling": _choice(TIME_COUPLINGS),
    "sampling#enabled": boolean,
    "sampling#num_per_class": positive_int,
    "sampling#steps": positive_int,
    "sampling#method": _choice(tuple(FIXED_STEP_METHODS)),
    "sampling#batch_size": positive_int,
    "sampling#time_coupling": _choice(TIME_COUPLINGS),
    "sampling#guidance_scale": check_guidance_scale,
}


def _step_counts(value: Any, name: str) -> Any:
    counts = value if isinstance(value, (list, tuple)) else [value]
    if not counts:
        raise ValueError(f"{name} must list at least one step count, got {value!r}")
    for c in counts:
        positive_int(c, name)
    if len(set(counts)) != len(counts):
        raise ValueError(f"{name} lists a step count twice: {value!r}")
    return value


def _optional_file(value: Any, name: str) -> Any:
    if value is not None and not Path(str(value)).expanduser().is_file():
        raise ValueError(f"{name}: file not found: {value}")
    return value


def _dataset_folder(value: Any, name: str) -> Any:
    if value is None or not str(value).strip():
        raise ValueError(f"{name} is not set: pass --{name} FOLDER (the dataset's folder of images and label maps)")
    return value


# the segmentation bundles (bundles/celebamask_hq): step-count lists where the classification bundles take one
# count, and the synthesis / inference settings
SEGMENTATION_RULES: dict[str, Callable[[Any, str], Any]] = {
    **{k: v for k, v in RULES.items() if not k.startswith("evaluation#")},
    "dataset_dir": _dataset_folder,
    "size": positive_int,
    "beta": positive_float,
    "segment": boolean,
    "synthesise": boolean,
    "training#latent_mask_draws": positive_int,
    "evaluation#split": _choice(MEDMNIST_SPLITS),
    "evaluation#steps": _step_counts,
    "evaluation#method": _choice(tuple(FIXED_STEP_METHODS)),
    "evaluation#autocast": _autocast,
    "evaluation#batch_size": positive_int,
    "synthesis#enabled": boolean,
    "synthesis#steps": _step_counts,
    "synthesis#samples_per_mask": positive_int,
    "synthesis#batch_size": positive_int,
    "synthesis#max_masks": lambda v, n: v if v is None else positive_int(v, n),
    "synthesis#reference_split": lambda v, n: v if v is None else one_of(v, MEDMNIST_SPLITS, n),
    "synthesis#inception": _optional_file,
    "synthesis#baseline_ckpt": _optional_file,
    "synthesis#lpips": _choice(("auto", "none", *LPIPS_NETS)),
    "inference#steps": positive_int,
    "inference#synthesis_steps": positive_int,
    "inference#samples_per_mask": positive_int,
    "inference#batch_size": positive_int,
    "inference#overlay_alpha": fraction,
}


def check_settings(settings: Mapping[str, Any], rules: Mapping[str, Callable[[Any, str], Any]] | None = None) -> None:
    """Check every setting of ``settings`` that ``rules`` (default :data:`RULES`) knows; one ValueError listing all problems.

    ``settings`` maps top-level keys to values or to whole sections (``{"epochs": @epochs, "training":
    @training}`` in a config); a section's keys are checked as ``section#key``. Unknown keys are left to
    the objects they configure. The segmentation bundles pass :data:`SEGMENTATION_RULES`.
    """
    rules = RULES if rules is None else rules
    problems = []
    for key, value in settings.items():
        items = {f"{key}#{k}": v for k, v in value.items()} if isinstance(value, Mapping) else {key: value}
        for name, v in items.items():
            rule = rules.get(name)
            if rule is None:
                continue
            try:
                rule(v, name)
            except ValueError as e:
                problems.append(str(e))
    if problems:
        raise ValueError("; ".join(problems))


# ----------------------------------------------------------------------------- command-line overrides
@dataclass
class BundleCommand:
    """The parts of a ``python -m monai.bundle run`` command line that decide which keys exist."""

    config_file: Any
    overrides: list[str] = field(default_factory=list)
    tracking: Any = None
    meta_file: Any = None


def _is_flag(token: str) -> bool:
    # python-fire's rule: "--x" or "-x...", but not a negative number
    return token.startswith("--") or (len(token) > 1 and token[0] == "-" and token[1].isalpha())


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_bundle_command(argv: Sequence[str] | None = None) -> BundleCommand | None:
    """The config files and override keys of a ``monai.bundle run`` command line; None for any other command.

    Follows python-fire, which MONAI's command line uses: ``--key value``, ``--key=value`` and a bare
    ``--key`` (True) are keyword arguments, ``-`` in a key means ``_``; an ``--args_file`` adds its keys.
    """
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or Path(argv[0]).parent.name != "bundle" or Path(argv[0]).name != "__main__.py" or argv[1] != "run":
        return None
    kwargs: dict[str, Any] = {}
    tokens = argv[2:]
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token == "--":  # fire's own flags follow
            break
        if _is_flag(token):
            key, eq, value = token.lstrip("-").partition("=")
            if not eq:
                if i + 1 < len(tokens) and not _is_flag(tokens[i + 1]):
                    value = tokens[i + 1]
                    i += 1
                else:
                    value = "True"
            kwargs[key.replace("-", "_")] = _literal(value)
        i += 1
    if kwargs.get("args_file"):
        from monai.bundle import ConfigParser

        kwargs = {**ConfigParser.load_config_file(str(kwargs["args_file"])), **kwargs}
    if kwargs.get("config_file") is None:
        return None
    return BundleCommand(
        config_file=kwargs["config_file"],
        overrides=[k for k in kwargs if k not in RUN_ARGUMENTS],
        tracking=kwargs.get("tracking"),
        meta_file=kwargs.get("meta_file"),
    )


def _key_paths(config: Any, prefix: str = "") -> list[str]:
    paths = []
    items = config.items() if isinstance(config, dict) else enumerate(config) if isinstance(config, list) else ()
    for k, v in items:
        path = f"{prefix}{k}"
        paths.append(path)
        paths.extend(_key_paths(v, path + "#"))
    return paths


def unknown_overrides(config: Mapping[str, Any], keys: Sequence[str], extra: Sequence[str] = ()) -> dict[str, list[str]]:
    """``{override key: nearest existing keys}`` for every key of ``keys`` naming no key path of ``config``."""
    known = set(_key_paths(dict(config))) | set(extra)
    unknown = {}
    for key in keys:
        path = key.replace("::", "#")
        if path in known or path.startswith("_meta_"):
            continue
        unknown[key] = difflib.get_close_matches(path, sorted(known), n=3, cutoff=0.6)
    return unknown


def _tracking_keys(tracking: Any) -> list[str]:
    """Top-level keys MONAI's ``--tracking`` adds to a bundle (``tracking_uri``, ``experiment_name``, ...)."""
    if tracking is None:
        return []
    from monai.bundle import ConfigParser
    from monai.bundle.utils import DEFAULT_EXP_MGMT_SETTINGS

    settings = DEFAULT_EXP_MGMT_SETTINGS.get(tracking) if isinstance(tracking, str) else None
    if settings is None:
        settings = ConfigParser.load_config_files(tracking)
    return [k for k in settings.get("configs", {}) if k not in settings.get("handlers_id", {})]


def _override_problem(command: BundleCommand) -> str | None:
    from monai.bundle import ConfigParser

    try:
        config = ConfigParser.load_config_files(command.config_file)
    except Exception:  # unreadable config files: MONAI reports those itself
        return None
    unknown = unknown_overrides(config, command.overrides, _tracking_keys(command.tracking))
    if not unknown:
        return None
    files = command.config_file if isinstance(command.config_file, str) else ", ".join(map(str, command.config_file))
    parts = []
    for key, near in unknown.items():
        hint = ""
        if near:
            names = ["--" + n for n in near]
            hint = f" (did you mean {names[0] if len(names) == 1 else ', '.join(names[:-1]) + ' or ' + names[-1]}?)"
        parts.append(f"--{key}{hint}")
    return f"unknown override{'s' if len(parts) > 1 else ''} for {files}: {', '.join(parts)}; these name no setting of the bundle"


def _explain(exc: BaseException) -> str | None:
    command = parse_bundle_command()
    return None if command is None else _override_problem(command)


def check_command_line(argv: Sequence[str] | None = None) -> None:
    """Raise ValueError when a ``monai.bundle run`` override names no key of the bundle (nothing for other commands)."""
    errors.install_excepthook()
    errors.add_explainer(_explain)
    command = parse_bundle_command(argv)
    problem = None if command is None else _override_problem(command)
    if problem:
        raise ValueError(problem)


class BundleLogFormatter(errors.OneLineFormatter):
    """:class:`~medsymmflow.errors.OneLineFormatter` that also explains misspelled overrides (bundles' logging.conf).

    MONAI reads ``logging.conf`` before it applies the overrides, so building this formatter is the
    first medsymmflow code a bundle run executes.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        errors.add_explainer(_explain)


# ----------------------------------------------------------------------------- cleaning up a failed run
def _tensorboard_records(path: Path) -> int:
    """How many records a TensorBoard event file holds (TFRecord framing: length, crc, data, crc)."""
    count = 0
    with open(path, "rb") as f:
        while header := f.read(12):
            if len(header) < 12:
                break
            (length,) = struct.unpack("<Q", header[:8])
            f.seek(length + 4, os.SEEK_CUR)
            count += 1
    return count


def _snapshot(folder: Path) -> set[Path]:
    if not folder.is_dir():
        return set()
    return {folder, *folder.rglob("*")}


def clean_up_on_failure(output_dir: str | os.PathLike) -> None:
    """On an uncaught exception, remove what this run created under ``output_dir`` and left without content.

    That is TensorBoard event files holding only their header (a writer that logged nothing) and the
    folders that are then empty (``tensorboard/``, ``checkpoints/``, ``output_dir`` itself); files with
    content, such as the checkpoint of a run that failed in its fifth epoch, stay.
    """
    folder = Path(output_dir)
    before = _snapshot(folder)
    pid = str(os.getpid())

    def clean() -> None:
        new = sorted(_snapshot(folder) - before, key=lambda p: len(p.parts), reverse=True)
        for path in new:
            if path.is_file() and path.name.startswith("events.out.tfevents.") and pid in path.name.split("."):
                if _tensorboard_records(path) <= 1:
                    path.unlink()
        for path in new:
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()

    errors.on_failure(clean)
