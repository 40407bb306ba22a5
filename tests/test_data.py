"""`job prepare` on real files through the real command: token streams, shard format, kill -9 and
resume, the fineweb-edu layout, the hub unreachable, bad input, and verification.

Shards are read here by a reader written from the format's description (256 int32 header: magic
20240520, version 1, token count; then uint16 tokens), not by job.data.shards.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import signal
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from harness import job_env, read_shard, run_job, start_job

from job.data.shakespeare import TRAIN_TOKENS
from job.tokenizer import get_encoding

EOT = 50256
WORDS = ("the of and to in is was for on that with as by at from it his an were are which this be "
         "data token shard Émile naïve café 東京 über 123 4567 , . ; : ! ? ' \" ( ) -- \n\n").split(" ")


def make_docs(n: int, seed: int, max_words: int = 300) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, max_words))) for _ in range(n)]


def read_dataset(data_dir: Path) -> np.ndarray:
    """val shards then train shards, in index order: the stream as it came from the source."""
    files = sorted(data_dir.glob("val_*.bin")) + sorted(data_dir.glob("train_*.bin"))
    manifest = json.loads((data_dir / "manifest.json").read_text())
    assert [s["file"] for s in manifest["shards"]] == [f.name for f in files]
    for entry, f in zip(manifest["shards"], files, strict=True):
        assert hashlib.sha256(f.read_bytes()).hexdigest() == entry["sha256"]
    return np.concatenate([read_shard(f) for f in files])


def expected_stream(docs: list[str]) -> np.ndarray:
    enc = get_encoding()
    return np.array([t for d in docs if d for t in [EOT, *enc.encode_ordinary(d)]], dtype=np.uint16)


def write_jsonl(path: Path, docs: list[str], opener=open) -> None:
    with opener(path, "wt", encoding="utf-8") as f:
        for i, d in enumerate(docs):
            f.write(json.dumps({"id": i, "text": d}) + "\n")


def zst_writer(path: Path, mode: str, encoding: str):
    return zstandard.open(path, mode, encoding=encoding)


@pytest.mark.e2e
def test_every_file_kind_gives_tiktokens_stream_with_eot_before_each_document(tmp_path: Path):
    docs = make_docs(240, seed=1)
    parts = [docs[i::8] for i in range(8)]
    src = tmp_path / "src"
    (src / "txt").mkdir(parents=True)
    for i, d in enumerate(parts[0]):  # one document per .txt file
        (src / "txt" / f"{i:03d}.txt").write_text(d, encoding="utf-8")
    (src / "split.txt").write_text("\n<doc>\n".join(parts[1]), encoding="utf-8")
    write_jsonl(src / "a.jsonl", parts[2])
    write_jsonl(src / "b.jsonl.gz", parts[3], gzip.open)
    write_jsonl(src / "c.jsonl.zst", parts[4], zst_writer)
    pq.write_table(pa.table({"text": parts[5], "n": list(range(len(parts[5])))}), src / "d.parquet",
                   row_group_size=7)
    pq.write_table(pa.table({"text": parts[6]}), src / "e.parquet")
    (src / "e.parquet.gz").write_bytes(gzip.compress((src / "e.parquet").read_bytes()))
    (src / "e.parquet").unlink()
    with zstandard.open(src / "f.txt.zst", "wt", encoding="utf-8") as f:
        f.write("\n<doc>\n".join(parts[7]))

    out = tmp_path / "out"
    r = run_job(["prepare", "--source", str(src / "txt" / "*.txt"), "--source", str(src / "split.txt"),
                 "--source", str(src / "a.jsonl"), "--source", str(src / "b.jsonl.gz"),
                 "--source", str(src / "c.jsonl.zst"), "--source", str(src / "d.parquet"),
                 "--source", str(src / "e.parquet.gz"), "--source", str(src / "f.txt.zst"),
                 "--separator", r"\n<doc>\n", "--out", str(out), "--shard-tokens", "3000", "--workers", "2"])
    assert r.returncode == 0, r.stderr
    # Whole-file .txt with a separator splits too; the one-per-file ones hold no separator.
    want = expected_stream([d for p in parts for d in p])
    got = read_dataset(out)
    assert got.size == want.size and np.array_equal(got, want)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["total_tokens"] == want.size
    assert manifest["source"]["documents"] == sum(1 for d in docs if d) == int((got == EOT).sum())
    assert [s["tokens"] for s in manifest["shards"]][:-1] == [3000] * (len(manifest["shards"]) - 1)
    assert manifest["shards"][0]["split"] == "val" and len(manifest["fingerprint"]) == 16

    again = run_job(["prepare", "--out", str(out), "--verify"])
    assert again.returncode == 0 and "sha256 verified" in again.stdout


def start_and_kill(args: list[str], out: Path, train_shards: int) -> None:
    """Start a prepare and SIGKILL it once `train_shards` train shards are on disk."""
    proc = start_job(["prepare", *args, "--out", str(out)], log=out.parent / f"{out.name}.log")
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if len(list(out.glob("train_*.bin"))) >= train_shards:
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "manifest.json").exists(), "prepare finished before the kill; grow the corpus"


@pytest.mark.e2e
def test_kill_9_mid_prepare_then_rerun_gives_the_same_bytes(tmp_path: Path):
    docs = make_docs(1000, seed=7, max_words=600)
    # parquet first (small row groups, like fineweb's), then jsonl: one kill lands in each
    pq.write_table(pa.table({"text": docs[:400]}), tmp_path / "a.parquet", row_group_size=16)
    write_jsonl(tmp_path / "b.jsonl", docs[400:])
    args = ["--source", str(tmp_path / "a.parquet"), "--source", str(tmp_path / "b.jsonl"),
            "--shard-tokens", "2000", "--val-tokens", "5000", "--workers", "2"]

    whole = tmp_path / "whole"
    assert run_job(["prepare", *args, "--out", str(whole)]).returncode == 0
    n_train = len(list(whole.glob("train_*.bin")))

    killed = tmp_path / "killed"
    start_and_kill(args, killed, 3)  # inside a.parquet
    start_and_kill(args, killed, int(n_train * 0.7))  # resumed, then killed again inside b.jsonl
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in killed.glob("*.bin")}
    assert len(before) > 3
    other = run_job(["prepare", *[a if a != "2000" else "3000" for a in args], "--out", str(killed)])
    assert other.returncode == 2 and "unfinished prepare with other settings (shard_tokens" in other.stderr

    r = run_job(["prepare", *args, "--out", str(killed)])
    assert r.returncode == 0, r.stderr
    assert "resuming after" in r.stdout
    assert np.array_equal(read_dataset(killed), expected_stream(docs))
    whole_files = sorted(p.name for p in whole.iterdir())
    assert sorted(p.name for p in killed.iterdir()) == whole_files
    for name in whole_files:
        if name != "manifest.json":
            assert (killed / name).read_bytes() == (whole / name).read_bytes(), name
    for name, ident in before.items():  # finished shards were not written again
        assert ((killed / name).stat().st_ino, (killed / name).stat().st_mtime_ns) == ident, name
    m_whole, m_killed = (json.loads((d / "manifest.json").read_text()) for d in (whole, killed))
    assert m_killed["shards"] == m_whole["shards"] and m_killed["fingerprint"] == m_whole["fingerprint"]
    assert m_killed["source"]["documents"] == m_whole["source"]["documents"] == 1000


def fineweb_row_table(docs: list[str], offset: int) -> pa.Table:
    """The columns HuggingFaceFW/fineweb-edu's parquet files carry."""
    n = len(docs)
    return pa.table({
        "text": docs, "id": [f"<urn:uuid:{offset + i}>" for i in range(n)], "dump": ["CC-MAIN-2024-10"] * n,
        "url": [f"https://example.org/{offset + i}" for i in range(n)], "file_path": ["s3://x"] * n,
        "language": ["en"] * n, "language_score": [0.9] * n, "token_count": [len(d) // 4 for d in docs],
        "score": [3.1] * n, "int_score": [3] * n,
    })


@pytest.mark.e2e
def test_fineweb_edu_from_a_local_copy_of_the_hub_layout_with_max_tokens(tmp_path: Path):
    docs = make_docs(150, seed=3)
    hf = tmp_path / "hf"
    (hf / "sample" / "10BT").mkdir(parents=True)
    (hf / "sample" / "100BT").mkdir(parents=True)
    pq.write_table(fineweb_row_table(docs[:90], 0), hf / "sample" / "10BT" / "000_00000.parquet", row_group_size=20)
    pq.write_table(fineweb_row_table(docs[90:], 90), hf / "sample" / "10BT" / "001_00000.parquet")
    pq.write_table(fineweb_row_table(["not this config"], 0), hf / "sample" / "100BT" / "000_00000.parquet")
    want = expected_stream(docs)
    cap = int(want.size * 0.8)

    out = tmp_path / "fw"
    r = run_job(["prepare", "--source", "fineweb-edu", "--hf-dir", str(hf), "--out", str(out),
                 "--shard-tokens", "4000", "--max-tokens", str(cap), "--workers", "2"], env=job_env(HF_HUB_OFFLINE="1"))
    assert r.returncode == 0, r.stderr
    got = read_dataset(out)
    assert np.array_equal(got, want[:cap])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["name"] == "fineweb-edu" and manifest["source"]["config"] == "sample-10BT"
    assert manifest["source"]["files"] == ["sample/10BT/000_00000.parquet", "sample/10BT/001_00000.parquet"]
    assert manifest["total_tokens"] == cap and manifest["settings"]["max_tokens"] == cap
    again = run_job(["prepare", "--source", "fineweb-edu", "--hf-dir", str(hf), "--out", str(out)])
    assert again.returncode == 0 and "already prepared" in again.stdout


@pytest.mark.e2e
@pytest.mark.parametrize("env, says", [
    ({"HF_ENDPOINT": "http://127.0.0.1:9"}, "cannot reach the Hugging Face hub"),
    ({"HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE is set"),
])
def test_fineweb_edu_download_fails_in_one_line_without_the_hub(tmp_path: Path, env: dict, says: str):
    r = run_job(["prepare", "--source", "fineweb-edu", "--out", str(tmp_path / "fw")],
                env=job_env(HF_HOME=str(tmp_path / "hf-home"), **env))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0]
    assert "local files" in lines[0]
    assert not (tmp_path / "fw" / "manifest.json").exists()


def bad_inputs(tmp: Path) -> dict[str, tuple[list[str], str]]:
    write_jsonl(tmp / "ok.jsonl", ["some text"])
    (tmp / "other.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    pq.write_table(pa.table({"content": ["x"]}), tmp / "other.parquet")
    (tmp / "broken.jsonl.gz").write_bytes(b"this is not gzip at all")
    (tmp / "empty.jsonl").write_text("\n" + json.dumps({"text": ""}) + "\n")
    (tmp / "notes.docx").write_text("x")
    return {
        "missing field": ([str(tmp / "other.jsonl")], "no field 'text'"),
        "missing column": ([str(tmp / "other.parquet")], "no column 'text' (columns: content)"),
        "unreadable": ([str(tmp / "broken.jsonl.gz")], "cannot read"),
        "empty": ([str(tmp / "empty.jsonl")], "empty input"),
        "no match": ([str(tmp / "nothing" / "*.jsonl")], "no files match"),
        "file type": ([str(tmp / "notes.docx")], "unsupported file type"),
    }


@pytest.mark.e2e
@pytest.mark.parametrize("case", ["missing field", "missing column", "unreadable", "empty", "no match", "file type"])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, case: str):
    sources, says = bad_inputs(tmp_path)[case]
    args = [a for s in sources for a in ("--source", s)]
    r = run_job(["prepare", *args, "--out", str(tmp_path / "out"), "--workers", "1"])
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], r.stderr


@pytest.mark.e2e
def test_verify_and_train_refuse_a_corrupt_or_truncated_shard(tmp_path: Path):
    corpus = tmp_path / "c.jsonl"
    write_jsonl(corpus, make_docs(60, seed=5))
    data = tmp_path / "d"
    assert run_job(["prepare", "--source", str(corpus), "--out", str(data), "--shard-tokens", "2000",
                    "--workers", "1"]).returncode == 0
    shard = data / "train_000001.bin"
    raw = bytearray(shard.read_bytes())
    raw[2000] ^= 0xFF  # a flipped token: size and header still fine, only the hash can tell
    shard.write_bytes(bytes(raw))
    r = run_job(["prepare", "--out", str(data), "--verify"])
    assert r.returncode == 2 and str(shard) in r.stderr and "sha256" in r.stderr
    train = ["train", "--data", str(data), "--out-dir", str(tmp_path / "runs"), "--run", "t", "--preset", "tiny",
             "--device", "cpu", "--max-iters", "1", "--block-size", "16", "--n-layer", "1", "--n-head", "2",
             "--n-embd", "32", "--batch-size", "2"]
    r = run_job([*train, "--verify"])
    assert r.returncode == 2 and str(shard) in r.stderr and "sha256" in r.stderr, r.stderr
    shard.write_bytes(bytes(raw[:-10]))  # truncated: the cheap start-up check sees it
    r = run_job(train)
    assert r.returncode == 2 and str(shard) in r.stderr and "truncated" in r.stderr, r.stderr


def test_counts_read_like_people_write_them():
    from job.errors import ConfigError
    from job.units import parse_count

    assert parse_count("3.68B", "x") == 3_680_000_000
    assert parse_count("100M", "x") == 100_000_000
    assert parse_count("250k", "x") == 250_000
    assert parse_count("1_000", "x") == 1000
    for bad in ("", "-5", "lots", "0"):
        with pytest.raises(ConfigError, match="--max-tokens: .* is not a positive count"):
            parse_count(bad, "--max-tokens")


@pytest.mark.e2e
def test_the_embedded_corpus_size_plan_counts_on_is_what_prepare_writes(shakespeare: Path):
    manifest = json.loads((shakespeare / "manifest.json").read_text())
    assert manifest["splits"]["train"]["tokens"] == TRAIN_TOKENS


@pytest.mark.e2e
def test_train_says_its_epochs_warns_past_4_and_refuses_past_max_epochs(small_env: dict, tmp_path: Path):
    """The start line counts the epochs; past 4 one warning line; past max_epochs (100) exit 2 before
    any work, unless max_epochs is raised (0: no limit)."""
    # 30 iterations x 256 tokens: a sliver of the 1.35M-token split
    res = run_job(["train", "--run", "few"], env=small_env)
    assert res.returncode == 0 and "iterations, 0.0057 epochs of 1.35M training tokens" in res.stdout, res.stdout
    assert "warning" not in res.stderr
    # 5.3 epochs: trains, with the one line; stopped by the time window after its first step
    five = {**small_env, "JOB_MAX_ITERS": "28000", "JOB_MAX_RUNTIME": "1s"}
    res = run_job(["train", "--run", "five"], env=five)
    assert res.returncode == 75, res.stderr
    assert "28,000 iterations, 5.30 epochs of 1.35M training tokens" in res.stdout
    said = [line for line in res.stderr.splitlines() if "epochs" in line or "times" in line]
    assert len(said) == 1 and said[0].startswith("warning: run 'five' sees its training tokens 5.30 times"), said
    assert "job prepare --source fineweb-edu --max-tokens 7.17M" in said[0]
    # 189 epochs: refused before anything is written
    many = {**small_env, "JOB_MAX_ITERS": "1000000", "JOB_MAX_RUNTIME": "1s"}
    res = run_job(["train", "--run", "many"], env=many)
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        f"error: max_epochs: run 'many' sees its training tokens 189 times (256.00M tokens from the 1.35M-token train "
        f"split of {small_env['JOB_DATA']}), more than max_epochs=100; prepare more data (job prepare --source "
        f"fineweb-edu --max-tokens 256.00M, then train with --data fineweb-edu), lower max_iters, or set "
        f"max_epochs=0 to train anyway"], res.stderr
    assert not (Path(small_env["JOB_OUT_DIR"]) / "many" / "config.json").exists()
    res = run_job(["train", "--run", "many", "--max-epochs", "0"], env=many)
    assert res.returncode == 75 and "189 epochs" in res.stdout, res.stderr
