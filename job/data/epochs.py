"""How many times a run sees its training tokens, and when that is too many.

A run of max_iters x tokens_per_iter tokens over a train split of D tokens sees each token
run_tokens / D times. Up to about 4 epochs repeated tokens are nearly as good as new ones; past
that their value falls off fast, and far past it the model memorises the split (Muennighoff et
al., 2023, "Scaling Data-Constrained Language Models"). So above WARN_EPOCHS `job plan` and
`job train` say so in one line, naming the split's size and how to prepare a bigger one; above
the max_epochs setting (100 by default; 0 turns the check off) `job train` refuses before any
work, since a night spent there is a night spent memorising (gpt2-40m on the embedded corpus is
about 7,750 epochs).
"""

from __future__ import annotations

from pathlib import Path

from job.errors import ConfigError
from job.units import human_count

WARN_EPOCHS = 4.0


def shown(epochs: float) -> str:
    """7,757 / 2.85 / 0.0015: whole epochs where there are many, two figures where there are few."""
    return f"{epochs:,.0f}" if epochs >= 10 else f"{epochs:.2f}" if epochs >= 1 else f"{epochs:.2g}"


def bigger_dataset(run_tokens: float) -> str:
    """The command that prepares enough text for a run of this many tokens, and how to use it."""
    return (f"job prepare --source fineweb-edu --max-tokens {human_count(run_tokens)}, "
            f"then train with --data fineweb-edu")


def describe(run: str, run_tokens: float, train_tokens: float, data: Path | str) -> str:
    return (f"run '{run}' sees its training tokens {shown(run_tokens / train_tokens)} times "
            f"({human_count(run_tokens)} tokens from the {human_count(train_tokens)}-token train split of {data})")


def epochs_warning(run: str, run_tokens: float, train_tokens: float | None, data: Path | str) -> str | None:
    """One line when the run repeats its data past WARN_EPOCHS, else None."""
    if not train_tokens or run_tokens / train_tokens <= WARN_EPOCHS:
        return None
    return (f"warning: {describe(run, run_tokens, train_tokens, data)}; past about {WARN_EPOCHS:g} epochs repeated "
            f"tokens stop paying. For more data: {bigger_dataset(run_tokens)}")


def check_epochs(run: str, run_tokens: float, train_tokens: float, data: Path | str, max_epochs: float) -> None:
    """Refuse a run that would see its training tokens more than max_epochs times (0: no limit)."""
    if max_epochs and run_tokens / train_tokens > max_epochs:
        raise ConfigError(f"max_epochs: {describe(run, run_tokens, train_tokens, data)}, more than max_epochs="
                          f"{max_epochs:g}; prepare more data ({bigger_dataset(run_tokens)}), lower max_iters, "
                          f"or set max_epochs=0 to train anyway")
