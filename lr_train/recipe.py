"""The pieces the commands share: loading a model for a stage, text for evaluation, the tokenizer."""

from __future__ import annotations

import os

import torch

from lr_train.models import build_model, set_context_window

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def load_tokenizer(name: str):
    """The word ``toy`` gives the bundled toy tokenizer; anything else goes to ``AutoTokenizer``."""
    if name == "toy":
        from lr_train.toy import toy_tokenizer

        return toy_tokenizer()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name)


def refresh_rotary_embedding(model) -> None:
    """Rebuild the model's own rotary module from its (edited) config, so the unfused paths (generation
    with a KV cache, an unpatched model) use the same RoPE base as the fused kernels."""
    base = model.base_model
    rot = getattr(base, "rotary_emb", None)
    if rot is None:
        return
    device = rot.inv_freq.device if hasattr(rot, "inv_freq") else None
    base.rotary_emb = type(rot)(config=model.config).to(device)


def load_model(
    name_or_path: str,
    *,
    tokenizer=None,
    target_length: int | None = None,
    rope_theta: float | None = None,
    dtype: str = "fp32",
    seed: int = 0,
):
    """A model ready for a stage: a path / hub name or a ``tiny-*`` preset (sized to ``tokenizer``), with its
    context window raised to ``target_length`` (RoPE base by the paper's rule unless ``rope_theta``)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    vocab = len(tokenizer) if tokenizer is not None else None
    model = build_model(name_or_path, vocab_size=vocab, dtype=DTYPES[dtype], seed=seed)
    if target_length is not None and (
        target_length > model.config.max_position_embeddings or rope_theta is not None
    ):
        set_context_window(model.config, target_length, rope_theta)
        refresh_rotary_embedding(model)
    return model


def read_texts(paths: list[str]) -> list[str]:
    """Text documents from .txt (one per file), .jsonl (``text`` field) and ``datasets`` folders."""
    from lr_train.commands.prepare import iter_documents

    docs = []
    for doc in iter_documents(paths):
        text = getattr(doc, "text", None)
        if text:
            docs.append(text)
    if not docs:
        raise ValueError(f"no text documents found in {paths}")
    return docs


def default_eval_texts(n_docs: int = 64, seed: int = 7) -> list[str]:
    from lr_train.toy import toy_corpus

    return toy_corpus(n_docs, seed=seed)


def token_stream(tokenizer, texts: list[str]) -> torch.Tensor:
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for t in texts:
        ids.extend(tokenizer(t, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
    return torch.tensor(ids, dtype=torch.int64)


def is_dir_with(path: str, name: str) -> bool:
    return os.path.isfile(os.path.join(path, name))
