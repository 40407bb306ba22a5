"""Documents from local files: .txt, .jsonl and .parquet, each optionally .gz or .zst compressed.

A document has a position (file index, record index in that file) that is stable from run to run,
so a killed `job prepare` can start reading again exactly where its last finished shard ended.
Records are: a .txt file (or one piece of it between separators), a .jsonl line, a parquet row.
Empty documents are skipped but keep their record index, so positions never shift.

Nothing here holds more than one file's record batch (or one .txt document) in memory.
"""

from __future__ import annotations

import glob
import gzip
import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from job.errors import UserError

KINDS = (".txt", ".jsonl", ".parquet")
COMPRESSIONS = (".gz", ".zst")
PARQUET_BATCH = 1024  # rows per pyarrow record batch


class SourceError(UserError):
    """Input that cannot be read as asked; the message names the file and what would work."""


# (file index, record index, text): where a document is, and the document.
Document = tuple[int, int, str]


def file_kind(path: str | Path) -> tuple[str, str]:
    """('.jsonl', '.gz') for corpus.jsonl.gz; ('.txt', '') for notes.txt."""
    name = Path(path).name.lower()
    compression = next((c for c in COMPRESSIONS if name.endswith(c)), "")
    stem = name[: len(name) - len(compression)]
    kind = next((k for k in KINDS if stem.endswith(k)), "")
    if not kind:
        raise SourceError(f"{path}: unsupported file type; use .txt, .jsonl or .parquet, "
                          f"optionally compressed as .gz or .zst")
    return kind, compression


def expand(patterns: list[str]) -> list[Path]:
    """Files named by paths, directories (every supported file below) and globs, sorted, deduplicated."""
    found: list[Path] = []
    for pattern in patterns:
        if any(c in pattern for c in "*?["):
            matches = [Path(m) for m in sorted(glob.glob(pattern, recursive=True)) if Path(m).is_file()]
            if not matches:
                raise SourceError(f"source: no files match '{pattern}'")
        elif Path(pattern).is_dir():
            matches = sorted(p for p in Path(pattern).rglob("*") if p.is_file() and _supported(p))
            if not matches:
                raise SourceError(f"source: no .txt, .jsonl or .parquet files under {pattern}")
        elif Path(pattern).exists():
            matches = [Path(pattern)]
        else:
            raise SourceError(f"source: '{pattern}' is neither a source name (shakespeare, fineweb-edu) "
                              f"nor an existing file, directory or glob")
        found.extend(matches)
    unique = list(dict.fromkeys(found))
    for p in unique:
        file_kind(p)
    return unique


def _supported(path: Path) -> bool:
    try:
        file_kind(path)
        return True
    except SourceError:
        return False


def _unreadable(path: Path, e: BaseException) -> SourceError:
    reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return SourceError(f"{path}: cannot read ({reason}); check the file, or leave it out of --source")


@contextmanager
def open_binary(path: Path) -> Iterator[IO[bytes]]:
    """The file's bytes, decompressed on the fly for .gz and .zst."""
    _, compression = file_kind(path)
    try:
        raw = open(path, "rb")
    except OSError as e:
        raise _unreadable(path, e) from None
    try:
        if compression == ".gz":
            yield gzip.GzipFile(fileobj=raw)
        elif compression == ".zst":
            import zstandard

            yield zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        else:
            yield raw
    finally:
        raw.close()


def _read_errors() -> tuple[type[BaseException], ...]:
    import zstandard

    return (OSError, EOFError, UnicodeDecodeError, zstandard.ZstdError)


def txt_documents(path: Path, separator: str | None) -> Iterator[tuple[int, str]]:
    """The whole file as one document, or its pieces between separators (read in 4 MiB chunks)."""
    with open_binary(path) as f:
        text = io.TextIOWrapper(f, encoding="utf-8", newline="")
        if not separator:
            yield 0, text.read()
            return
        record, tail = 0, ""
        while chunk := text.read(1 << 22):
            pieces = (tail + chunk).split(separator)
            tail = pieces.pop()
            for piece in pieces:
                yield record, piece
                record += 1
        yield record, tail


def jsonl_documents(path: Path, text_field: str) -> Iterator[tuple[int, str]]:
    with open_binary(path) as f:
        for record, line in enumerate(io.TextIOWrapper(f, encoding="utf-8")):
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)  # several times json's speed: parsing runs beside the workers
            except orjson.JSONDecodeError as e:
                raise SourceError(f"{path}:{record + 1}: not a JSON object ({e.msg}); "
                                  f".jsonl wants one object per line") from None
            if not isinstance(row, dict) or text_field not in row:
                have = ", ".join(row) if isinstance(row, dict) else type(row).__name__
                raise SourceError(f"{path}:{record + 1}: no field '{text_field}' (has: {have}); "
                                  f"pass --text-field NAME")
            value = row[text_field]
            if value is not None and not isinstance(value, str):
                raise SourceError(f"{path}:{record + 1}: field '{text_field}' is {type(value).__name__}, "
                                  f"not text; pass --text-field NAME")
            yield record, value or ""


@contextmanager
def parquet_file(path: Path) -> Iterator[Any]:
    """pyarrow's ParquetFile; a compressed one is first unpacked to a temporary file (parquet
    needs random access), which is removed afterwards."""
    import pyarrow.parquet as pq

    _, compression = file_kind(path)
    tmp = None
    try:
        if compression:
            tmp = tempfile.NamedTemporaryFile(suffix=".parquet", delete=False)
            with open_binary(path) as src, tmp:
                shutil.copyfileobj(src, tmp, 1 << 22)
        try:
            pf = pq.ParquetFile(tmp.name if tmp else path)
        except OSError as e:
            raise _unreadable(path, e) from None
        yield pf
    finally:
        if tmp is not None:
            os.unlink(tmp.name)


def parquet_column(pf: Any, path: Path, text_field: str) -> None:
    names = pf.schema_arrow.names
    if text_field not in names:
        raise SourceError(f"{path}: no column '{text_field}' (columns: {', '.join(names)}); "
                          f"pass --text-field NAME")


def parquet_documents(path: Path, text_field: str, start: int = 0) -> Iterator[tuple[int, str]]:
    """Rows from `start` on, one record batch at a time; row groups before `start` are not read."""
    import pyarrow as pa

    try:
        with parquet_file(path) as pf:
            parquet_column(pf, path, text_field)
            first = 0
            for group in range(pf.metadata.num_row_groups):
                rows = pf.metadata.row_group(group).num_rows
                if first + rows <= start:
                    first += rows
                    continue
                record = first
                for batch in pf.iter_batches(batch_size=PARQUET_BATCH, row_groups=[group], columns=[text_field]):
                    for text in batch.column(0).to_pylist():
                        if record >= start:
                            yield record, text or ""
                        record += 1
                first += rows
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise SourceError(f"{path}: cannot read as parquet ({e})") from None


def parquet_rows(path: Path) -> int | None:
    """Row count from the footer, for uncompressed files (an ETA needs no unpacking)."""
    if file_kind(path)[1]:
        return None
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).metadata.num_rows
    except Exception:  # unreadable: the read itself will say so with the file's name
        return None


def file_documents(path: Path, text_field: str, separator: str | None, start: int = 0) -> Iterator[tuple[int, str]]:
    """(record, text) of one file from record `start` on, whatever its kind."""
    kind, _ = file_kind(path)
    if kind == ".parquet":
        yield from parquet_documents(path, text_field, start)
        return
    records = txt_documents(path, separator) if kind == ".txt" else jsonl_documents(path, text_field)
    try:
        for record, text in records:
            if record >= start:
                yield record, text
    except _read_errors() as e:
        raise _unreadable(path, e) from None


@dataclass
class LocalSource:
    """Local files and globs, read in sorted order."""

    patterns: list[str]
    text_field: str = "text"
    separator: str | None = None
    files: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.files = expand(self.patterns)

    def describe(self) -> dict[str, Any]:
        return {
            "name": "local", "patterns": self.patterns, "text_field": self.text_field,
            "separator": self.separator,
            "files": [{"path": str(p), "bytes": p.stat().st_size} for p in self.files],
        }

    def total_documents(self) -> int | None:
        """Known up front for whole-file .txt and uncompressed parquet; otherwise None (no ETA)."""
        total = 0
        for p in self.files:
            kind, _ = file_kind(p)
            if kind == ".txt" and not self.separator:
                total += 1
            elif kind == ".parquet" and (rows := parquet_rows(p)) is not None:
                total += rows
            else:
                return None
        return total

    def documents(self, start_file: int = 0, start_record: int = 0) -> Iterator[Document]:
        for i in range(start_file, len(self.files)):
            first = start_record if i == start_file else 0
            for record, text in file_documents(self.files[i], self.text_field, self.separator, first):
                if text:
                    yield i, record, text
