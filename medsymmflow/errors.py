"""One-line error reports for bundle runs: show the root cause medsymmflow raised, not MONAI's wrappers.

``python -m monai.bundle run`` wraps every failure of a config expression in ``RuntimeError("Failed to
evaluate ...")``; the message a user needs (which file is missing, which setting is wrong) sits at the
bottom of a long chain. With :func:`install_excepthook` such a run ends with::

    medsymmflow: error: pneumoniamnist.npz not found in /data/medmnist ...

The bundles' ``logging.conf`` names :class:`OneLineFormatter`, so the hook is installed when MONAI reads
the logging configuration, before it applies the command-line overrides; log records of a failing
engine (MONAI's StatsHandler logs every exception with its traceback) keep their message but lose the
traceback. Set ``MEDSYMMFLOW_TRACEBACK=1`` to get the full tracebacks instead.

Before the line is printed, the callbacks registered with :func:`on_failure` run (they remove what a
failed run half-wrote), and the explainers registered with :func:`add_explainer` may name a cause
medsymmflow did not raise itself (a misspelled override that MONAI reports as a ``KeyError``).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from types import TracebackType
from typing import Any, Callable

__all__ = [
    "OneLineFormatter", "add_explainer", "install_excepthook", "on_failure", "package_cause", "root_cause", "show_tracebacks",
]

_PACKAGE_DIR = str(Path(__file__).resolve().parent)
_CLEAR_TYPES = (FileNotFoundError, ValueError, TypeError, RuntimeError, FloatingPointError)
_explainers: list[Callable[[BaseException], str | None]] = []
_failure_callbacks: list[Callable[[], None]] = []


def show_tracebacks() -> bool:
    """Whether the user asked for full tracebacks (``MEDSYMMFLOW_TRACEBACK`` set to anything but 0 / empty)."""
    return os.environ.get("MEDSYMMFLOW_TRACEBACK", "").strip() not in ("", "0")


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    while exc is not None and all(exc is not e for e in out):
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of the ``__cause__`` / ``__context__`` chain (what a reader library really said)."""
    return _chain(exc)[-1]


def package_cause(exc: BaseException) -> BaseException | None:
    """The innermost exception of the chain that medsymmflow itself raised with a clear type, if any."""
    for e in reversed(_chain(exc)):
        if isinstance(e, _CLEAR_TYPES) and _raised_in_package(e):
            return e
    return None


def _raised_in_package(exc: BaseException) -> bool:
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last = tb.tb_frame.f_code.co_filename
        tb = tb.tb_next
    return last is not None and str(Path(last).resolve()).startswith(_PACKAGE_DIR)


def add_explainer(explain: Callable[[BaseException], str | None]) -> None:
    """Register ``explain(exc) -> message or None``, asked when medsymmflow raised none of the chain (idempotent)."""
    if explain not in _explainers:
        _explainers.append(explain)


def on_failure(callback: Callable[[], None]) -> None:
    """Run ``callback()`` when the process ends with an uncaught exception, before the message is printed."""
    _failure_callbacks.append(callback)


def _message(exc: BaseException) -> str | None:
    cause = package_cause(exc)
    if cause is not None:
        return str(cause)
    for explain in _explainers:
        try:
            message = explain(exc)
        except Exception:  # an explainer must never hide the real error
            message = None
        if message:
            return message
    return None


def _hook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    for callback in list(_failure_callbacks):
        try:
            callback()
        except Exception as e:  # cleaning up must not replace the error being reported
            print(f"medsymmflow: could not clean up after the failure ({type(e).__name__}: {e})", file=sys.stderr)
    # Our own checks raise clear messages; the chain around them only says where MONAI evaluated them.
    message = None if show_tracebacks() else _message(exc)
    if message is not None:
        print(f"medsymmflow: error: {message}", file=sys.stderr)
        print("(set MEDSYMMFLOW_TRACEBACK=1 to see the full traceback)", file=sys.stderr)
        return
    sys.__excepthook__(exc_type, exc, tb)


def install_excepthook() -> None:
    """Make uncaught medsymmflow errors end the process with one clear line (idempotent)."""
    sys.excepthook = _hook


class OneLineFormatter(logging.Formatter):
    """A log formatter that drops exception tracebacks (unless ``MEDSYMMFLOW_TRACEBACK=1``) and installs the hook.

    Named in the bundles' ``logging.conf``: MONAI's StatsHandler logs every exception raised in an engine
    with its traceback before re-raising it; the process then ends with the hook's one line, so the log
    keeps only the record's message.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        install_excepthook()

    def formatException(self, ei: Any) -> str:  # noqa: N802 - logging's API
        """The traceback text when asked for, else nothing."""
        return super().formatException(ei) if show_tracebacks() else ""

    def formatStack(self, stack_info: str) -> str:  # noqa: N802 - logging's API
        """The stack text when asked for, else nothing."""
        return super().formatStack(stack_info) if show_tracebacks() else ""
