"""Restart backoff: exponential, capped, first retry immediate. Pure."""

from __future__ import annotations


def restart_delay(failures: int, base: float, cap: float) -> float:
    """Seconds to wait before the next attempt after `failures` consecutive failures.

    1 failure -> 0 (restart at once, like kubelet and systemd), then base, 2*base, 4*base...
    never more than cap.
    """
    if failures <= 1:
        return 0.0
    return float(min(cap, base * (2 ** min(failures - 2, 40))))
