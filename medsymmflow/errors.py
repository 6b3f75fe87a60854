"""One-line error reports for bundle runs: show the root cause medsymmflow raised, not MONAI's wrappers.

``python -m monai.bundle run`` wraps every failure of a config expression in ``RuntimeError("Failed to
evaluate ...")``; the message a user needs (which file is missing, which flag is unknown) sits at the
bottom of a long chain. The bundles call :func:`install_excepthook` first, so such a run ends with::

    medsymmflow: error: pneumoniamnist.npz not found in /data/medmnist ...

Set ``MEDSYMMFLOW_TRACEBACK=1`` to get the full traceback instead.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import TracebackType

__all__ = ["install_excepthook", "package_cause", "root_cause"]

_PACKAGE_DIR = str(Path(__file__).resolve().parent)
_CLEAR_TYPES = (FileNotFoundError, ValueError, TypeError, RuntimeError, FloatingPointError)


def root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of the ``__cause__`` / ``__context__`` chain."""
    return _chain(exc)[-1]


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    while exc is not None and all(exc is not e for e in out):
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


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


def _hook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    # Our own checks raise clear messages; the chain around them only says where MONAI evaluated them.
    cause = package_cause(exc)
    if cause is not None and not os.environ.get("MEDSYMMFLOW_TRACEBACK"):
        print(f"medsymmflow: error: {cause}", file=sys.stderr)
        print("(set MEDSYMMFLOW_TRACEBACK=1 to see the full traceback)", file=sys.stderr)
        return
    sys.__excepthook__(exc_type, exc, tb)


def install_excepthook() -> None:
    """Make uncaught medsymmflow errors end the process with one clear line (idempotent)."""
    sys.excepthook = _hook
