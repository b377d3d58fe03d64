"""Errors backends raise, mapped from their libraries' own at the boundary.

    BackendError(message, reason)            base; `reason` is a CamelCase condition reason
    ├── TemporaryError                       retry with the restart backoff
    │   └── BackendUnavailable               the engine/CLI/API cannot be reached at all
    └── PermanentError                       the spec cannot work as written (Stalled)

The reconcile core turns these into status (state, lastError, conditions) and decides
when to retry; backends never sleep-and-retry themselves.
"""

from __future__ import annotations


class BackendError(Exception):
    reason: str = "BackendError"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason

    def __str__(self) -> str:
        return self.message


class TemporaryError(BackendError):
    reason = "ProvisionFailed"


class BackendUnavailable(TemporaryError):
    reason = "BackendUnavailable"


class PermanentError(BackendError):
    reason = "InvalidSpec"
