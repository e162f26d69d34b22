"""`training.compile`: the U-Net's forward through torch.compile, with eager as the fallback.

Inductor needs a C++ compiler and may not handle every model a user brings; a failed compile must
not cost the user the run. The first failure is reported once, and from then on the module runs
eagerly: the same arithmetic, only slower.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn


class CompiledOrEager:
    """Call `module` through `torch.compile`; on a compile failure, warn once and call it eagerly."""

    def __init__(self, module: nn.Module, **options):
        self.module = module
        self.compiled = torch.compile(module, **options)

    def __call__(self, *args, **kwargs):
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except torch._dynamo.exc.TorchDynamoException as error:  # compiling failed; the module did not run
                first = (str(error).strip().splitlines() or [""])[0][:300]
                warnings.warn(
                    f"training.compile: torch.compile could not compile {type(self.module).__name__} "
                    f"({type(error).__name__}: {first}); training goes on without compiling (same results, slower steps)",
                    stacklevel=2,
                )
                self.compiled = None
        return self.module(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.module, name)
