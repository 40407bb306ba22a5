"""Train a small GPT overnight on your own GPU, and know what it costs."""

__version__ = "0.1.0"
