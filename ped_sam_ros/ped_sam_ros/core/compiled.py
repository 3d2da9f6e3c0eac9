"""``torch.compile`` for a stage's encoder blocks, as an option that fails clearly.

``compile=True`` means PyTorch's default backend (inductor: a C++ compiler on the
CPU, Triton on a GPU); a string names a backend (``"eager"`` traces without
generating code, which is how the tests exercise the path cheaply).  What can be
checked up front is checked at construction (backend name, TorchDynamo support
for this Python, a compiler for inductor); compilation itself happens at a
block's first call, and a failure there is a :class:`CompileError` naming the
block, or, with ``allow_fallback=True``, a warning and the uncompiled block.

Compiled callables are kept outside the module tree, so the stage's parameter
names (the checkpoint keys) are unchanged.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
from typing import Callable, Dict, Mapping, Optional, Union

import torch
from torch import nn

log = logging.getLogger(__name__)

CXX_COMPILERS = ("g++", "c++", "clang++")


class CompileError(RuntimeError):
    """torch.compile cannot be used here, with the reason."""


def compile_backend(compile: Union[bool, str]) -> Optional[str]:
    """``False``/``"none"`` -> None, ``True`` -> ``"inductor"``, a backend name -> itself."""
    if compile is False or compile is None or (isinstance(compile, str) and compile.lower() in ("", "none", "off")):
        return None
    return "inductor" if compile is True else str(compile)


def compile_problem(backend: str, device: torch.device) -> Optional[str]:
    """Why ``backend`` cannot compile for ``device`` on this machine, or None if it looks usable."""
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile (PyTorch 2.0 or newer needed)"
    import torch._dynamo as dynamo

    if not dynamo.is_dynamo_supported():
        return "TorchDynamo (torch.compile) does not support this Python version"
    known = dynamo.list_backends(exclude_tags=())
    if backend not in known:
        return f"unknown torch.compile backend {backend!r}: one of {sorted(known)}"
    if backend == "inductor":
        if device.type == "cpu" and not any(shutil.which(c) for c in CXX_COMPILERS):
            return "inductor on the CPU needs a C++ compiler (g++ or clang++), none is on PATH"
        if device.type == "cuda" and importlib.util.find_spec("triton") is None:
            return "inductor on a GPU needs Triton, which is not installed"
    return None


class _CompiledBlock:
    """Calls the compiled block; a failure of its first (compiling) call is reported clearly."""

    def __init__(self, name: str, block: nn.Module, backend: str, allow_fallback: bool):
        self.name, self.block, self.backend, self.allow_fallback = name, block, backend, allow_fallback
        self.fn: Callable = torch.compile(block, backend=backend, dynamic=False)
        self.compiled_once = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled_once:
            return self.fn(x)
        try:
            y = self.fn(x)
        except Exception as e:  # compilation errors come in many types (InductorError, BackendCompilerFailed...)
            msg = f"torch.compile ({self.backend}) failed on block {self.name}: {type(e).__name__}: {e}"
            if not self.allow_fallback:
                raise CompileError(msg + " (use compile=False, or allow the fallback to run it uncompiled)") from e
            log.warning("%s; running it uncompiled", msg.splitlines()[0])
            self.fn = self.block
            y = self.fn(x)
        self.compiled_once = True
        return y


def compile_blocks(
    blocks: Mapping[str, nn.Module], compile: Union[bool, str], device: torch.device, allow_fallback: bool = False
) -> Dict[int, Callable]:
    """Block index -> compiled callable for every block (empty when ``compile`` is off).

    Raises :class:`CompileError` when the backend cannot work here, unless
    ``allow_fallback`` (then: a warning and no compilation).
    """
    backend = compile_backend(compile)
    if backend is None:
        return {}
    problem = compile_problem(backend, torch.device(device))
    if problem is not None:
        if not allow_fallback:
            raise CompileError(problem + " (use compile=False, or allow the fallback to run uncompiled)")
        log.warning("%s; running uncompiled", problem)
        return {}
    return {int(k): _CompiledBlock(k, b, backend, allow_fallback) for k, b in blocks.items()}
