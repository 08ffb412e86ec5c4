"""Model patching. (Scaffold: filled in by the patch work.)"""

SUPPORTED_MODELS: tuple[str, ...] = ()


class UnsupportedModelError(ValueError):
    pass


def patch(model, **kwargs):
    raise NotImplementedError


def unpatch(model):
    raise NotImplementedError


def is_patched(model) -> bool:
    return False
