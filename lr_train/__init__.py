"""lr_train: LongRecipe training on top of Hugging Face models.

``lr_train.patch(model)`` makes a supported model use lr_kernels' fused attention and cross-entropy.
"""

from lr_train.patching import SUPPORTED_MODELS, UnsupportedModelError, is_patched, patch, unpatch

__all__ = ["SUPPORTED_MODELS", "UnsupportedModelError", "is_patched", "patch", "unpatch"]
