"""Numbers as people write and read them: '3.68B' tokens, '8h30m', '07:00'; 1.23M, 2h05m.

Parsing raises ConfigError naming the setting and an example of what would be right, so every
place that takes such a number fails the same way.
"""

from __future__ import annotations

import re

from job.errors import ConfigError

_SCALE = {"k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}
_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_count(text: str | int | None, name: str) -> int | None:
    """'100M', '3.68B', '250k', '1e6' or '12345' -> an int; None stays None."""
    if text is None or isinstance(text, int):
        return text
    t = text.strip().replace("_", "").replace(",", "")
    scale = _SCALE.get(t[-1:].lower(), 1)
    try:
        value = float(t[:-1] if scale > 1 else t) * scale
    except ValueError:
        value = -1
    if not value >= 1:  # NaN fails too
        raise ConfigError(f"{name}: '{text}' is not a positive count; e.g. 100M, 3.68B, 250k, 5000")
    return int(round(value))


def parse_duration(text: str, name: str = "max_runtime") -> float:
    """'8h30m' -> 30600.0 seconds; '1d', '90m', '45s'; a bare number is seconds."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    m = _DURATION.match(text)
    if not text or not m or not any(m.groups()):
        raise ConfigError(f"{name}: '{text}' is not a duration; use e.g. 8h30m, 90m or 3600")
    d, h, mi, s = (int(g or 0) for g in m.groups())
    return float(((d * 24 + h) * 60 + mi) * 60 + s)


def parse_clock(text: str, name: str = "stop_at") -> tuple[int, int, int]:
    """'07:00' -> (7, 0, 0); seconds are optional ('06:59:30')."""
    m = re.fullmatch(r"(\d{1,2}):(\d{2})(?::(\d{2}))?", text.strip())
    if not m or int(m.group(1)) > 23 or int(m.group(2)) > 59 or int(m.group(3) or 0) > 59:
        raise ConfigError(f"{name}: '{text}' is not a local time; use HH:MM or HH:MM:SS, e.g. 07:00")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def human_duration(seconds: float) -> str:
    if seconds != seconds or seconds < 0:  # NaN or unknown
        return "?"
    s = int(seconds)
    if s >= 86400:
        return f"{s // 86400}d{s % 86400 // 3600:02d}h"
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{seconds:.1f}s"


def human_count(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"
