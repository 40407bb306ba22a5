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
from job.data.shards import MANIFEST, ShardError, check_dataset, prepared, split_files
from job.errors import ConfigError

EMBEDDED = "shakespeare"


@dataclass(frozen=True)
class Dataset:
    path: Path
    manifest: dict[str, Any]

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    def files(self, split: str) -> list[Path]:
        return split_files(self.path, self.manifest, split)

    def shortest_shard(self, split: str) -> int:
        return min((s["tokens"] for s in self.manifest["shards"] if s["split"] == split), default=0)


def open_dataset(name: str, path: Path, block_size: int, verify: bool = False) -> Dataset:
    """The dataset `name` at `path`, ready to train on with windows of block_size + 1 tokens."""
    if name == EMBEDDED and not prepared(path):
        prepare_shakespeare(path)
    if not (path / MANIFEST).is_file():
        raise ConfigError(f"data: no prepared dataset at {path}; run `job prepare` for it "
                          f"or set data to a prepared directory")
    try:
        data = Dataset(path, check_dataset(path, verify=verify))
    except ShardError as e:
        raise ConfigError(f"data: {e}") from None
    for split in ("train", "val"):
        shortest = data.shortest_shard(split)
        if shortest < block_size + 1:
            raise ConfigError(f"block_size: {block_size} is too long for the data ({split} has a shard of "
                              f"{shortest} tokens); use block_size <= {max(shortest - 1, 0)}")
    return data
