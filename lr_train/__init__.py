"""lr_train: LongRecipe training on top of Hugging Face models.

``lr_train.patch(model)`` makes a supported model use lr_kernels' fused attention and cross-entropy.

The public names are loaded on first use, so ``python -m lr_train`` can reject a bad flag without first
importing torch and transformers (seconds of start-up).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lr_train.patching import SUPPORTED_MODELS, UnsupportedModelError, is_patched, patch, unpatch

__all__ = ["SUPPORTED_MODELS", "UnsupportedModelError", "is_patched", "patch", "unpatch"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("lr_train.patching"), name)
    raise AttributeError(f"module 'lr_train' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
