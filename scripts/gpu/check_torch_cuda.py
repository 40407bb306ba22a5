"""Is the image's torch a published (version, CUDA variant) pair, on a base image of that CUDA?

The Dockerfile installs `torch==<requirements.txt's pin>` from PyTorch's `<TORCH_CUDA>` index on
`CUDA_IMAGE`; the Makefile's DOCKER_VARIANTS offer the other variant. A pair PyTorch never
published fails the build only on a machine with Docker, minutes in; this fails at `make lint`,
in a second, naming the fix. Facts: scripts/gpu/torch_cuda.tsv.

    python scripts/gpu/check_torch_cuda.py                       check the repository's files
    python scripts/gpu/check_torch_cuda.py --torch 2.13.0 --cuda cu128   check one pair
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def published(table: Path = ROOT / "scripts" / "gpu" / "torch_cuda.tsv") -> dict[str, set[str]]:
    rows = (line.split("\t") for line in table.read_text().splitlines() if line and not line.startswith("#"))
    return {version: set(variants.split()) for version, variants in rows}


def problem(torch_version: str, variant: str, base_image: str | None = None) -> str | None:
    """None when the pair is published (and the base image's CUDA is the variant's), else why not."""
    table = published()
    if torch_version not in table:
        return (f"torch {torch_version} is not in scripts/gpu/torch_cuda.tsv; add its row from PyTorch's release "
                f"compatibility matrix")
    if variant not in table[torch_version]:
        return (f"torch {torch_version} has no {variant} build (published: {', '.join(sorted(table[torch_version]))});"
                f" pick one of those for TORCH_CUDA and a matching CUDA_IMAGE")
    if base_image:
        m = re.search(r":(\d+)\.(\d+)\.", base_image)
        if not m or f"cu{m.group(1)}{m.group(2)}" != variant:
            return f"base image {base_image} is not CUDA {variant[2:-1]}.{variant[-1]}; use an nvidia/cuda tag of it"
    return None


def repository_pairs() -> list[tuple[str, str, str, str]]:
    """(where, torch, variant, base image) for the Dockerfile's default and each Makefile variant."""
    pin = re.search(r"^torch==(\S+)$", (ROOT / "requirements.txt").read_text(), re.M)
    docker = (ROOT / "Dockerfile").read_text()
    default = [re.search(rf"^ARG {name}=(\S+)$", docker, re.M) for name in ("TORCH_CUDA", "CUDA_IMAGE")]
    if not pin or not all(default):
        sys.exit("error: requirements.txt's torch== pin, or the Dockerfile's ARG TORCH_CUDA= or ARG CUDA_IMAGE=, "
                 "not found")
    pairs = [("Dockerfile", pin.group(1), default[0].group(1), default[1].group(1))]
    for variant, image in re.findall(r"^CUDA_IMAGE_(cu\d+)\s*:?=\s*(\S+)$", (ROOT / "Makefile").read_text(), re.M):
        pairs.append((f"Makefile CUDA={variant}", pin.group(1), variant, image))
    return pairs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--torch")
    ap.add_argument("--cuda")
    args = ap.parse_args()
    pairs = [("given", args.torch, args.cuda, None)] if args.torch else repository_pairs()
    bad = [(where, why) for where, version, variant, image in pairs if (why := problem(version, variant, image))]
    for where, why in bad:
        print(f"error: {where}: {why}", file=sys.stderr)
    if not bad:
        print(f"ok: {'; '.join(f'{w}: torch {v} {c}' for w, v, c, _ in pairs)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
