"""FineWeb-Edu (HuggingFaceFW/fineweb-edu) from the Hugging Face hub, or from a local copy of it.

The dataset is a tree of parquet files with a `text` column: config `sample-10BT` lives under
sample/10BT/, `default` under data/, and a crawl such as `CC-MAIN-2024-10` under
data/CC-MAIN-2024-10/. Files are listed at one pinned revision and downloaded one at a time as
the reader reaches them, so a 28 GB config never needs to be on disk before tokenising starts.

`hf_dir` is the seam for offline use and tests: a directory laid out like the repository (what
`hf download HuggingFaceFW/fineweb-edu --repo-type dataset --local-dir DIR` leaves) is read in
place and the hub is never contacted.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from job.data.sources import Document, SourceError, parquet_documents, parquet_rows

REPO = "HuggingFaceFW/fineweb-edu"
DEFAULT_CONFIG = "sample-10BT"
TEXT_COLUMN = "text"


def config_prefix(config: str) -> str:
    """The folder of a config inside the repository."""
    if config == "default":
        return "data/"
    if config.startswith("sample-"):
        return f"sample/{config.removeprefix('sample-')}/"
    return f"data/{config}/"


def hub_error(e: BaseException, what: str) -> SourceError:
    """One line that says what to do, whatever the hub client raised."""
    from huggingface_hub import errors

    if isinstance(e, errors.GatedRepoError) or getattr(getattr(e, "response", None), "status_code", 0) in (401, 403):
        hint = "no access to the dataset: set HF_TOKEN to a token that can read it, or pass local files"
    elif isinstance(e, errors.RevisionNotFoundError | errors.EntryNotFoundError):
        hint = "not found on the hub: check --hf-config, or pass local files"
    elif isinstance(e, errors.RepositoryNotFoundError):
        hint = "dataset not found or no access: set HF_TOKEN, or pass local files"
    elif isinstance(e, errors.OfflineModeIsEnabled):
        hint = "HF_HUB_OFFLINE is set: unset it, pass a local copy with --hf-dir, or pass local files"
    else:
        hint = ("cannot reach the Hugging Face hub: check the network (and HF_TOKEN), "
                "pass a local copy with --hf-dir, or pass local files")
    detail = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
    return SourceError(f"{what}: {hint} ({type(e).__name__}: {detail})")


@dataclass
class FinewebSource:
    config: str = DEFAULT_CONFIG
    hf_dir: Path | None = None
    revision: str | None = None  # pinned at listing time: a resume reads the very same files
    files: list[str] = field(default_factory=list)  # paths inside the repository

    def __post_init__(self) -> None:
        self.token = os.environ.get("HF_TOKEN") or None
        self.files = self._list_local() if self.hf_dir else self._list_hub()
        if not self.files:
            where = self.hf_dir or f"{REPO} on the hub"
            raise SourceError(f"source: no parquet files for config '{self.config}' under "
                              f"{config_prefix(self.config)} in {where}; check --hf-config")

    def _list_local(self) -> list[str]:
        assert self.hf_dir is not None
        if not self.hf_dir.is_dir():
            raise SourceError(f"--hf-dir: {self.hf_dir} is not a directory")
        self.revision = "local"
        base = self.hf_dir / config_prefix(self.config)
        return sorted(str(p.relative_to(self.hf_dir)) for p in base.rglob("*.parquet"))

    def _list_hub(self) -> list[str]:
        from huggingface_hub import HfApi

        api = HfApi(token=self.token)
        try:
            if self.revision is None:
                self.revision = api.dataset_info(REPO, token=self.token).sha
            tree = api.list_repo_tree(REPO, config_prefix(self.config).rstrip("/"), recursive=True,
                                      repo_type="dataset", revision=self.revision, token=self.token)
            return sorted(e.path for e in tree if e.path.endswith(".parquet"))
        except Exception as e:  # the client raises its own, httpx's and OS errors
            raise hub_error(e, f"listing {REPO}") from None

    def local_path(self, name: str) -> Path:
        """The file on disk: in hf_dir, or downloaded into the hub cache (reused on a rerun)."""
        if self.hf_dir:
            return self.hf_dir / name
        from huggingface_hub import hf_hub_download

        try:
            return Path(hf_hub_download(REPO, name, repo_type="dataset", revision=self.revision, token=self.token))
        except Exception as e:
            raise hub_error(e, f"downloading {name}") from None

    def describe(self) -> dict[str, Any]:
        return {"name": "fineweb-edu", "repo": REPO, "config": self.config, "revision": self.revision,
                "text_field": TEXT_COLUMN, "files": self.files}

    def total_documents(self) -> int | None:
        """Known from the parquet footers when every file is already local."""
        if not self.hf_dir:
            return None
        rows = [parquet_rows(self.hf_dir / f) for f in self.files]
        return None if None in rows else sum(r for r in rows if r is not None)

    def documents(self, start_file: int = 0, start_record: int = 0) -> Iterator[Document]:
        # While file i is tokenised, file i+1 downloads in a thread: the CPUs never wait on the network.
        ahead = self._fetch(start_file)
        for i in range(start_file, len(self.files)):
            path = ahead()
            ahead = self._fetch(i + 1)
            for record, text in parquet_documents(path, TEXT_COLUMN, start_record if i == start_file else 0):
                if text:
                    yield i, record, text

    def _fetch(self, i: int) -> Callable[[], Path]:
        """Start getting file i; the returned call waits for it (and raises what the download raised).
        A daemon thread, so stopping early (max_tokens) never waits for a download nobody needs;
        the hub client only ever renames a download into place once it is whole."""
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                box["path"] = self.local_path(self.files[i])
            except BaseException as e:  # handed to the waiting caller
                box["error"] = e

        thread = threading.Thread(target=work, daemon=True)
        if i < len(self.files):
            thread.start()

        def result() -> Path:
            thread.join()
            if "error" in box:
                raise box["error"]
            return box["path"]
        return result
