"""The dataset a run trains on: prepared (the embedded corpus on the spot, the first time), checked
on every start, and split into its train and val files.

The check is cheap (every shard the manifest lists is there, with the right header and size);
`verify` also re-hashes every shard. The training loop depends on this module, not on the prepare
command: a dataset other than the embedded one is prepared beforehand with `job prepare`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from job.data.shakespeare import prepare_shakespeare
from job.data.shards import MANIFEST, ShardError, check_dataset, open_shard, prepared, split_files, split_tokens
from job.errors import ConfigError

EMBEDDED = "shakespeare"


@dataclass(frozen=True)
class Dataset:
    path: Path
    manifest: dict[str, Any]

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    @property
    def n_vocab(self) -> int:
        """Token ids are below this: the tokenizer's vocabulary, as the manifest records it."""
        return int(self.manifest.get("tokenizer", {}).get("n_vocab", 2**16))

    def files(self, split: str) -> list[Path]:
        return split_files(self.path, self.manifest, split)

    def tokens(self, split: str) -> int:
        return split_tokens(self.manifest, split)

    def shortest_shard(self, split: str) -> int:
        return min((s["tokens"] for s in self.manifest["shards"] if s["split"] == split), default=0)


def open_dataset(name: str, path: Path, block_size: int, vocab_size: int, verify: bool = False) -> Dataset:
    """The dataset `name` at `path`, ready to train on with windows of block_size + 1 tokens by a
    model of vocab_size. With verify, every shard is re-hashed and its largest id checked."""
    if name == EMBEDDED and not prepared(path):
        prepare_shakespeare(path)
    if not (path / MANIFEST).is_file():
        raise ConfigError(f"data: no prepared dataset at {path}; run `job prepare` for it "
                          f"or set data to a prepared directory")
    try:
        data = Dataset(path, check_dataset(path, verify=verify))
    except ShardError as e:
        raise ConfigError(f"data: {e}") from None
    if data.n_vocab > vocab_size:
        raise ConfigError(f"vocab_size: {vocab_size} is smaller than the dataset's vocabulary ({data.n_vocab}, "
                          f"{path / MANIFEST}); use vocab_size >= {data.n_vocab}")
    if verify:
        for file in data.files("train") + data.files("val"):
            if (top := int(open_shard(file).max(initial=0))) >= data.n_vocab:
                raise ShardError(f"{file}: token id {top} is outside the vocabulary (ids must be below "
                                 f"{data.n_vocab}); this shard is not GPT-2 tokens, prepare it again with "
                                 f"`job prepare`")
    for split in ("train", "val"):
        shortest = data.shortest_shard(split)
        if shortest < block_size + 1:
            raise ConfigError(f"block_size: {block_size} is too long for the data ({split} has a shard of "
                              f"{shortest} tokens); use block_size <= {max(shortest - 1, 0)}")
    return data
