"""Text -> GPT-2 tokens -> shards: the embedded Shakespeare corpus, FineWeb-Edu, local files.

A dataset counts as prepared once its manifest exists and every shard it lists is whole, so a
second run is a no-op and a killed run leaves nothing that looks finished. Shakespeare is small
and cut by whole plays (job/data/shakespeare.py: its shards must never change); every other
source streams through parallel tokenisation into fixed-size shards and resumes after a kill
(job/data/writer.py).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from job.data.encode import default_workers, encoded
from job.data.fineweb import DEFAULT_CONFIG, FinewebSource
from job.data.shards import MANIFEST, check_dataset, make_manifest, prepared, write_manifest
from job.data.sources import LocalSource, SourceError
from job.data.writer import STATE, ShardWriter, fresh_state, load_state
from job.fileio import clean_temporaries
from job.tokenizer import manifest_entry as tokenizer_entry
from job.ui import progress
from job.units import human_count

SOURCES = ("shakespeare", "fineweb-edu")  # or local paths and globs


@dataclass
class PrepareOptions:
    shard_tokens: int = 100_000_000
    val_tokens: int | None = None  # None: the first shard
    max_tokens: int | None = None  # None: the whole source
    workers: int | None = None  # None: one per core
    force: bool = False


def open_source(names: list[str], hf_config: str = DEFAULT_CONFIG, hf_dir: Path | None = None,
                text_field: str = "text", separator: str | None = None) -> LocalSource | FinewebSource:
    named = [n for n in names if n in SOURCES]
    if named and len(names) > 1:
        raise SourceError(f"source: '{named[0]}' cannot be mixed with other sources; prepare them separately")
    if names == ["fineweb-edu"]:
        return FinewebSource(hf_config, hf_dir)
    return LocalSource(names, text_field, separator)


def default_out(names: list[str], hf_config: str = DEFAULT_CONFIG) -> Path:
    """data/shakespeare, data/fineweb-edu (data/fineweb-edu-<config> for other configs), or
    data/<name of the first file, without extensions> (its directory's name for a glob)."""
    first = names[0] if names else "shakespeare"
    if first == "fineweb-edu":
        return Path("data") / ("fineweb-edu" if hf_config == DEFAULT_CONFIG else f"fineweb-edu-{hf_config}")
    if first in SOURCES:
        return Path("data") / first
    p = Path(first)
    name = p.parent.name if any(c in first for c in "*?[") else p.name.split(".")[0]
    return Path("data") / (name or "local")


def clear(data_dir: Path) -> None:
    """--force: drop a previous (or half-done) preparation; only files it made."""
    for p in [data_dir / MANIFEST, data_dir / STATE, *data_dir.glob("train_*.bin"), *data_dir.glob("val_*.bin")]:
        p.unlink(missing_ok=True)


def _detail(docs: int, tokens: int, nbytes: int, rate: float) -> str:
    return (f"{human_count(docs)} docs · {human_count(tokens)} tokens · {human_count(rate)} tokens/s · "
            f"{nbytes / 1e6:,.0f} MB")


def prepare_stream(source: LocalSource | FinewebSource, data_dir: Path, opts: PrepareOptions) -> dict[str, Any]:
    """Tokenise a source into shards plus manifest, resuming a killed run where it stopped."""
    if not opts.force and (manifest := prepared(data_dir)):
        print(f"{data_dir}: already prepared ({manifest['total_tokens']:,} tokens); nothing to do "
              f"(--force prepares it again)")
        return manifest
    data_dir.mkdir(parents=True, exist_ok=True)
    if opts.force:
        clear(data_dir)
    clean_temporaries(data_dir)  # writes a kill interrupted; never a finished file
    settings = json.loads(json.dumps({
        "source": source.describe(), "tokenizer": "gpt2", "shard_tokens": opts.shard_tokens,
        "val_tokens": opts.val_tokens or opts.shard_tokens, "max_tokens": opts.max_tokens,
    }))
    state = load_state(data_dir)
    if state and state["settings"] != settings:
        changed = [k for k in settings if settings[k] != state["settings"].get(k)]
        raise SourceError(f"{data_dir}: holds an unfinished prepare with other settings ({', '.join(changed)} "
                          f"differ); rerun with the same ones to resume, or pass --force to start over")
    resumed = bool(state and state["shards"])
    state = state or fresh_state(settings)
    writer = ShardWriter(data_dir, state)
    if resumed:
        print(f"{data_dir}: resuming after {len(state['shards'])} finished shards "
              f"({writer.written:,} tokens)", flush=True)
    workers = opts.workers or default_workers()
    started, base_tokens, base_docs = time.time(), writer.written, state["documents"]
    if not state["complete"]:
        file, record, skip = state["next"]
        total_docs = source.total_documents()
        total, unit = ((opts.max_tokens, "tokens") if opts.max_tokens else
                       (total_docs, "docs") if total_docs else (None, "tokens"))
        docs_seen, quiet_bar, said = base_docs, not sys.stderr.isatty(), time.time()
        print(f"{data_dir}: tokenising with {workers} worker process{'es' if workers > 1 else ''}", flush=True)
        with progress("tokenising", total=total, unit=unit, detail=True) as bar:
            for n, batch in enumerate(encoded(source.documents(file, record), workers)):
                lead = 0
                if n == 0 and resumed:
                    if tuple(batch.positions[0]) != (file, record):
                        raise SourceError(f"{data_dir}: the source changed since the killed run (document "
                                          f"{file}:{record} is gone); pass --force to start over")
                    lead, docs_seen = skip, docs_seen - 1
                writer.add(batch, lead)
                docs_seen += len(batch.positions)
                rate = (writer.tokens - base_tokens) / max(time.time() - started, 1e-9)
                detail = _detail(docs_seen, writer.tokens, state["bytes"] + writer.bytes_pending, rate)
                bar.update(completed=writer.tokens if unit == "tokens" else docs_seen, detail=detail)
                if quiet_bar and time.time() - said >= 30:  # logs (cron, containers) get a line now and then
                    print(f"{data_dir}: {detail}, {len(state['shards'])} shards", file=sys.stderr, flush=True)
                    said = time.time()
                if writer.done:
                    break
        writer.close()
    return finish(data_dir, state, settings, time.time() - started, writer.written - base_tokens)


def finish(data_dir: Path, state: dict[str, Any], settings: dict[str, Any], took: float, new_tokens: int
           ) -> dict[str, Any]:
    shards = state["shards"]
    if not shards:
        (data_dir / STATE).unlink(missing_ok=True)
        raise SourceError(f"source: empty input, no document has any text ({describe_files(settings)})")
    splits = {s: {"documents": sum(e["documents"] for e in shards if e["split"] == s),
                  "tokens": sum(e["tokens"] for e in shards if e["split"] == s)} for s in ("train", "val")}
    if not splits["train"]["tokens"]:
        raise SourceError(f"source: only {splits['val']['tokens']:,} tokens, all held out for val; rerun with "
                          f"--force and a --val-tokens below that, or give more input")
    manifest = make_manifest(
        source={**settings["source"], "documents": state["documents"], "bytes": state["bytes"]},
        shards=shards, splits=splits, tokenizer=tokenizer_entry(),
        settings={k: settings[k] for k in ("shard_tokens", "val_tokens", "max_tokens")})
    write_manifest(data_dir, manifest)
    (data_dir / STATE).unlink(missing_ok=True)
    print(f"{data_dir}: {manifest['total_tokens']:,} tokens ({state['documents']:,} documents, "
          f"{state['bytes'] / 1e6:,.1f} MB of text) in {len(shards)} shards; this run "
          f"{new_tokens / max(took, 1e-9):,.0f} tokens/s")
    return manifest


def describe_files(settings: dict[str, Any]) -> str:
    files = settings["source"].get("files", [])
    names = [f["path"] if isinstance(f, dict) else f for f in files]
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def verify(data_dir: Path) -> dict[str, Any]:
    """Re-hash every shard against the manifest (ShardError names the first bad file)."""
    started = time.time()
    manifest = check_dataset(data_dir, verify=True)
    size = sum((data_dir / s["file"]).stat().st_size for s in manifest["shards"])
    print(f"{data_dir}: ok, {len(manifest['shards'])} shards, {manifest['total_tokens']:,} tokens, "
          f"sha256 verified ({size / 1e6:,.1f} MB in {time.time() - started:.1f}s)")
    return manifest
