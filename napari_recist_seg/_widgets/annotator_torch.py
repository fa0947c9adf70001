"""Loading the ML stack inside a running napari (Qt + OpenGL) process without crashing.

torch's import chain (torchvision -> ``torch._dynamo``) imports triton when it is
installed. triton's compiled core bundles its own LLVM; where OpenGL is Mesa's software
renderer (llvmpipe: virtual machines, remote desktops, xvfb), Mesa has already loaded
another LLVM into the process and importing triton afterwards segfaults the whole
viewer. Loading triton with ``RTLD_DEEPBIND`` makes it bind to its own LLVM symbols.

Call :func:`prepare_ml_imports` in the GUI thread before a worker imports torch (the
annotator does it when it is created). It is a no-op when triton is absent or already
imported, and off Linux.
"""

from __future__ import annotations

import importlib.util
import os
import sys

__all__ = ["prepare_ml_imports"]


def prepare_ml_imports() -> bool:
    """Import triton with ``RTLD_DEEPBIND`` if it is installed and not yet imported.

    Returns True when it did so.
    """
    if "triton" in sys.modules:
        return False
    deepbind = getattr(os, "RTLD_DEEPBIND", 0)
    if not deepbind or not hasattr(sys, "setdlopenflags"):
        return False
    try:
        if importlib.util.find_spec("triton") is None:
            return False
    except (ImportError, ValueError):
        return False
    flags = sys.getdlopenflags()
    sys.setdlopenflags(flags | deepbind)
    try:
        import triton  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken triton only matters to GPU compilation
        return False
    finally:
        sys.setdlopenflags(flags)
    return True
