"""Rotary position embeddings from arbitrary position ids. (Scaffold: filled in by the rope work.)"""


class RopeFrequencies:  # placeholder until the rope module lands
    pass


def rope_frequencies(*args, **kwargs):
    raise NotImplementedError


def apply_rope(*args, **kwargs):
    raise NotImplementedError
