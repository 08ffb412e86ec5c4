"""The prepared-dataset folder: memory-mapped token and position arrays plus a manifest.

Layout of a folder written by ``python -m lr_train prepare``::

    manifest.json    format, version, settings, tokenizer, stats, array dtypes and lengths
    tokens.bin       int32 [N]     token ids of all samples, one after the other
    positions.bin    int32 [N]     position ids (below the target length)
    offsets.bin      int64 [S+1]   sample s is tokens[offsets[s]:offsets[s+1]]

Raw little-endian arrays (no header) so the writer can stream them; ``numpy.memmap`` reads them back
without loading the data into memory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np
import torch

DATASET_FORMAT = "lr_train.prepared"
DATASET_VERSION = 1
_ARRAYS = {"tokens": "<i4", "positions": "<i4", "offsets": "<i8"}


class PreparedDatasetWriter:
    """Streams samples into ``folder`` (which must exist and be empty); ``close(manifest)`` finishes it."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = os.fspath(folder)
        # Kept open across write() calls on purpose; close() / abort() release them.
        self._files = {name: open(os.path.join(self.folder, f"{name}.bin"), "wb") for name in _ARRAYS}  # noqa: SIM115
        self.n_tokens = 0
        self.n_samples = 0
        self._files["offsets"].write(np.zeros(1, dtype=_ARRAYS["offsets"]).tobytes())

    def write(self, input_ids: np.ndarray, position_ids: np.ndarray) -> None:
        if len(input_ids) != len(position_ids):
            raise ValueError(
                f"input_ids and position_ids differ in length: {len(input_ids)} vs {len(position_ids)}"
            )
        self._files["tokens"].write(np.asarray(input_ids, dtype=_ARRAYS["tokens"]).tobytes())
        self._files["positions"].write(np.asarray(position_ids, dtype=_ARRAYS["positions"]).tobytes())
        self.n_tokens += len(input_ids)
        self.n_samples += 1
        self._files["offsets"].write(np.array([self.n_tokens], dtype=_ARRAYS["offsets"]).tobytes())

    def close(self, manifest: dict) -> dict:
        for f in self._files.values():
            f.close()
        full = {"format": DATASET_FORMAT, "version": DATASET_VERSION, **manifest}
        full["arrays"] = {
            "tokens": {"file": "tokens.bin", "dtype": _ARRAYS["tokens"], "length": self.n_tokens},
            "positions": {"file": "positions.bin", "dtype": _ARRAYS["positions"], "length": self.n_tokens},
            "offsets": {"file": "offsets.bin", "dtype": _ARRAYS["offsets"], "length": self.n_samples + 1},
        }
        with open(os.path.join(self.folder, "manifest.json"), "w", encoding="utf-8") as f:
            json.dump(full, f, indent=1)
        return full

    def abort(self) -> None:
        for f in self._files.values():
            f.close()


class PreparedDataset(torch.utils.data.Dataset):
    """Read a folder written by ``prepare``: ``ds[i]`` -> {"input_ids", "position_ids"} int64 tensors [L_i].

    The arrays stay memory-mapped; only the requested sample is copied. ``ds.lengths`` (int64 [S]) feeds
    ``lr_train.data.pack_samples``; ``ds.manifest`` holds the settings and stats.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = os.fspath(folder)
        path = os.path.join(self.folder, "manifest.json")
        try:
            with open(path, encoding="utf-8") as f:
                self.manifest = json.load(f)
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(
                f"folder {self.folder} is not a prepared dataset: cannot read manifest.json ({exc})"
            ) from exc
        if self.manifest.get("format") != DATASET_FORMAT:
            raise ValueError(f"folder {self.folder}: manifest.json is not a {DATASET_FORMAT} manifest")
        if self.manifest.get("version") != DATASET_VERSION:
            raise ValueError(
                f"folder {self.folder}: dataset version {self.manifest.get('version')!r}, "
                "this lr_train reads "
                f"version {DATASET_VERSION} — prepare it again"
            )
        arrays = {}
        for name, meta in self.manifest["arrays"].items():
            file = os.path.join(self.folder, meta["file"])
            expected = meta["length"] * np.dtype(meta["dtype"]).itemsize
            if not os.path.exists(file) or os.path.getsize(file) != expected:
                raise ValueError(f"folder {self.folder}: {meta['file']} is missing or truncated")
            arrays[name] = (
                np.memmap(file, dtype=meta["dtype"], mode="r", shape=(meta["length"],))
                if meta["length"]
                else np.zeros(0, dtype=meta["dtype"])
            )
        self.tokens, self.positions, self.offsets = arrays["tokens"], arrays["positions"], arrays["offsets"]

    @property
    def settings(self) -> dict:
        return self.manifest.get("settings", {})

    @property
    def lengths(self) -> torch.Tensor:
        return torch.from_numpy(np.diff(np.asarray(self.offsets)))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"sample {index} out of range for {len(self)} samples")
        index %= len(self)
        a, b = int(self.offsets[index]), int(self.offsets[index + 1])
        return {
            "input_ids": torch.from_numpy(np.array(self.tokens[a:b], dtype=np.int64)),
            "position_ids": torch.from_numpy(np.array(self.positions[a:b], dtype=np.int64)),
        }

    def samples(self, indices: Sequence[int]) -> list[dict[str, torch.Tensor]]:
        return [self[i] for i in indices]
