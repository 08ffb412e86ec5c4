"""LongRecipe's data side: tokenizer-derived masks, segment selection + position methods, the prepared
dataset format, packing and the collator. See docs/data-pipeline.md."""

from lr_train.data.collate import IGNORE_INDEX, PackedBatchSampler, PackedCollator, pack_samples
from lr_train.data.dataset import PreparedDataset, PreparedDatasetWriter
from lr_train.data.masks import (
    FUNCTION_WORDS,
    TOKEN_CLASSES,
    delimiter_mask,
    digit_mask,
    load_impactful_mask,
    save_impactful_mask,
    token_class,
    token_texts,
    vocab_size,
)
from lr_train.data.samples import (
    POSITION_METHODS,
    PositionSettings,
    Sample,
    SampleBuilder,
    SelectionStats,
    build_samples,
)

__all__ = [
    "FUNCTION_WORDS",
    "IGNORE_INDEX",
    "POSITION_METHODS",
    "TOKEN_CLASSES",
    "PackedBatchSampler",
    "PackedCollator",
    "PositionSettings",
    "PreparedDataset",
    "PreparedDatasetWriter",
    "Sample",
    "SampleBuilder",
    "SelectionStats",
    "build_samples",
    "delimiter_mask",
    "digit_mask",
    "load_impactful_mask",
    "pack_samples",
    "save_impactful_mask",
    "token_class",
    "token_texts",
    "vocab_size",
]
