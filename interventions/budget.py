"""Memory budgets of a sweep: sizes as users write them (``"2GB"``, ``"512MiB"``, ``3e9``), the
default budget from the memory free now, and sizes as people read them.

Patching (``interventions.passes``) cuts its rows per pass to fit a budget; the CLI parses
``--max-memory`` here before any weights load.
"""

from __future__ import annotations

import os

import torch

from probe.errors import GatescopeError

#: Binary units: 1 KB = 1 KiB = 1024 bytes.
UNITS = {"": 1, "B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40}
UNITS.update({"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40})
UNITS.update({"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40})


def parse_bytes(value: int | float | str | None, name: str = "max_memory") -> int | None:
    """``"2GB"``, ``"512MiB"``, ``3e9`` or ``None`` -> bytes (binary units); ``name`` is the
    option named in the error."""
    if value is None:
        return None
    if isinstance(value, int | float):
        if not value > 0:  # also NaN
            raise GatescopeError(f"{name} {value} must be positive; give bytes or '2GB'")
        return int(value)
    text = value.strip().upper().replace(" ", "")
    number = text.rstrip("KMGTIB")
    unit = text[len(number) :]
    try:
        size = float(number) * UNITS[unit]
    except (ValueError, KeyError):
        raise GatescopeError(
            f"{name} {value!r} is not a size; give bytes or a number with KB, MB, GB (e.g. '2GB')"
        ) from None
    if not size >= 1:
        raise GatescopeError(f"{name} {value!r} must be at least one byte (e.g. '2GB')")
    return int(size)


def free_memory(device: str | torch.device) -> int:
    """Bytes free on ``device`` now (CUDA: free device memory; otherwise available RAM)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:  # MemAvailable counts reclaimable caches, as psutil does
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def default_budget(device: str | torch.device) -> int:
    """Half the memory free on ``device`` now."""
    return free_memory(device) // 2


def resolve_budget(value: int | float | str | None, device: str | torch.device) -> int | None:
    """A sweep's budget in bytes: ``"auto"`` is :func:`default_budget` of ``device``, ``None``
    no budget, anything else :func:`parse_bytes`."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return default_budget(device)
    return parse_bytes(value)


def human(n: int, pad: float = 1.0) -> str:
    """Bytes as people read them (``"1.3GB"``), times ``pad`` (a suggested size rounds up)."""
    for unit in ("GB", "MB", "KB"):
        if n >= UNITS[unit]:
            return f"{n / UNITS[unit] * pad:.1f}{unit}"
    return f"{n}B"


__all__ = ["UNITS", "default_budget", "free_memory", "human", "parse_bytes", "resolve_budget"]
