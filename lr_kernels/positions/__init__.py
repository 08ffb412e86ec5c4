"""Segment selection and position index transformation. (Scaffold: filled in by the data work.)"""


def split_segments(*args, **kwargs):
    raise NotImplementedError


def select_segments(*args, **kwargs):
    raise NotImplementedError


def remap_positions(*args, **kwargs):
    raise NotImplementedError


def randpos_positions(*args, **kwargs):
    raise NotImplementedError


def pose_positions(*args, **kwargs):
    raise NotImplementedError
