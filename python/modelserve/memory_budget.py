"""Memory budgets per device: what model instances may hold, and what happens past it.

Note [Memory budget]
~~~~~~~~~~~~~~~~~~~~
A budget caps the bytes the instances of every loaded version may hold on one device
(``cpu``, ``cuda:0``, ...; one the machine lacks is refused). Each version is charged
``per_instance_bytes x instances``:

- Before a version loads, its per-instance footprint is *estimated* as the size of the files in
  its version folder (the weights), and the load is admitted only if the estimate fits.
- After load and warmup it is *measured*: the growth of the process's resident memory (VmRSS)
  across load and warmup, which includes the weights as loaded, what each instance allocated and
  the working memory warmup needed (pool buffers stay with the pool, so the peak is included),
  divided by the instances. The measured figure replaces the estimate (it is in the model's
  statistics as ``memory``); if it no longer fits, the load fails.
- Scaling up (the autoscaler, a cold start, a runtime change) reserves ``per_instance_bytes`` for
  each instance added before the instance is created.

When a reservation does not fit, with ``evict`` on, idle versions (nothing queued or running) on
the same device release their instances, least recently used first, until it fits: they stay
READY and cold-start on their next request (Note [Autoscaling rule]). Otherwise, or when evicting
every idle version is not enough, the reservation fails with RESOURCE_EXHAUSTED naming the
budget, the footprint asked for, and what is loaded with its charge.

The measurement is a process-wide delta, so it is exact only when versions load one at a time
(the repository loads them in turn) and nothing else grows meanwhile; it is an operator's guard
rail, not an allocator. GPU instances are measured the same way (host memory): device memory is
not yet measured, only estimated from the files.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .errors import InvalidArgumentError, ResourceExhaustedError

__all__ = ["MemoryBudget", "parse_bytes", "parse_budget", "check_devices", "format_bytes", "rss_bytes", "folder_bytes"]

log = logging.getLogger("modelserve.memory")

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
          "t": 1000**4, "tb": 1000**4, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}


def parse_bytes(text: str | int) -> int:
    """``"2GiB"``, ``"512MB"``, ``"1.5g"`` or a plain number of bytes."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise InvalidArgumentError(f"'{text}' is not a size; expected a number with an optional unit such as 512MiB or 2GB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def parse_budget(text: str) -> dict[str, int]:
    """``"cpu=2GiB,cuda:0=10GiB"`` -> ``{"cpu": ..., "cuda:0": ...}`` (``gpu`` means ``cuda:0``)."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        device, sep, size = part.partition("=")
        if not sep:
            raise InvalidArgumentError(f"memory budget '{part}': expected DEVICE=SIZE, e.g. cpu=2GiB")
        out[_device(device.strip())] = parse_bytes(size)
    return out


def check_devices(devices: Iterable[str]) -> None:
    """Refuses a budget for a device this machine lacks (``cuda:1`` with one GPU, any ``cuda:N``
    without one): it would cap nothing."""
    cuda = sorted(d for d in devices if d.startswith("cuda:"))
    if not cuda:
        return
    from .cuda import device_count  # the native core: imported only when a GPU is named

    count = device_count()
    missing = [d for d in cuda if int(d.partition(":")[2]) >= count]
    if missing:
        has = "no CUDA device" if count == 0 else f"{count} CUDA device{'s' if count != 1 else ''}: cuda:0"
        has += f"..cuda:{count - 1}" if count > 1 else ""
        raise InvalidArgumentError(f"memory budget for {', '.join(missing)}: this machine has {has}; "
                                   "budget the devices it has (cpu=SIZE)")


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _device(name: str) -> str:
    name = name.lower()
    if name in ("gpu", "cuda"):
        return "cuda:0"
    if name == "cpu" or re.fullmatch(r"cuda:\d+", name):
        return name
    raise InvalidArgumentError(f"memory budget: unknown device '{name}'; expected cpu, gpu or cuda:N")


def rss_bytes() -> int:
    """This process's resident memory (VmRSS); 0 where /proc is not there."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def folder_bytes(path: Path) -> int:
    """The bytes of the files under ``path`` (a version's weights)."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file() and "__pycache__" not in p.parts)


class MemoryBudget:
    """Budgets per device and the charge of every version (Note [Memory budget]). Thread-safe;
    reservations are serialised so two loads cannot both take the last free bytes."""

    def __init__(self, limits: Mapping[str, int | str] | str, evict: bool = False) -> None:
        if isinstance(limits, str):
            limits = parse_budget(limits)
        self.limits = {_device(d): parse_bytes(v) for d, v in limits.items()}
        check_devices(self.limits)
        self.evict = evict
        self._admit = threading.Lock()  # one reservation (with its evictions) at a time
        self._lock = threading.Lock()
        self._charges: dict[Any, tuple[str, int]] = {}  # guarded by _lock: version -> (device, bytes)

    def used(self, device: str) -> int:
        with self._lock:
            return sum(b for d, b in self._charges.values() if d == device)

    def charges(self) -> list[tuple[Any, str, int]]:
        with self._lock:
            return [(v, d, b) for v, (d, b) in self._charges.items()]

    def charge(self, version: Any, device: str, nbytes: int) -> None:
        """Sets what ``version`` holds now (no check: call :meth:`reserve` first to grow)."""
        with self._lock:
            self._charges[version] = (device, max(0, int(nbytes)))

    def release(self, version: Any) -> None:
        with self._lock:
            self._charges.pop(version, None)

    def reserve(self, version: Any, device: str, nbytes: int, what: str) -> None:
        """Makes room for ``version`` to hold ``nbytes`` more on ``device`` and charges them;
        evicts idle versions when enabled; raises ResourceExhaustedError when it cannot."""
        limit = self.limits.get(device)
        with self._admit:
            if limit is not None:
                self._make_room(version, device, nbytes, limit, what)
            with self._lock:
                d, held = self._charges.get(version, (device, 0))
                self._charges[version] = (device, held + max(0, int(nbytes)))

    def _make_room(self, version: Any, device: str, nbytes: int, limit: int, what: str) -> None:
        tried: set[int] = set()
        while self.used(device) + nbytes > limit:
            victim = self._victim(version, device, tried) if self.evict else None
            if victim is None:
                raise ResourceExhaustedError(self._refusal(device, nbytes, limit, what))
            tried.add(id(victim))
            log.warning("memory budget %s: evicting %s (idle) to make room for %s", device, victim.label, what)
            try:
                victim.evict(f"evicted to make room for {what}")
            except Exception:
                log.exception("memory budget %s: evicting %s failed", device, victim.label)

    def _victim(self, version: Any, device: str, tried: set[int]) -> Any:
        with self._lock:
            candidates = [v for v, (d, b) in self._charges.items()
                          if d == device and b > 0 and v is not version and id(v) not in tried]
        idle = [v for v in candidates if v.idle()]
        return min(idle, key=lambda v: v.last_used, default=None)

    def _refusal(self, device: str, nbytes: int, limit: int, what: str) -> str:
        loaded = [f"{v.label} {format_bytes(b)}" for v, d, b in self.charges() if d == device and b > 0]
        used = self.used(device)
        why = "; no idle model is left to evict" if self.evict else "; eviction of idle models is off (--memory-evict)"
        return (f"{what} needs {format_bytes(nbytes)} on {device}, but the memory budget of {device} is "
                f"{format_bytes(limit)} and {format_bytes(used)} is in use by "
                f"[{', '.join(loaded) or 'nothing'}]{why}")

    def describe(self) -> dict[str, Any]:
        return {
            "evict": self.evict,
            "devices": {d: {"limit_bytes": lim, "used_bytes": self.used(d)} for d, lim in sorted(self.limits.items())},
        }
