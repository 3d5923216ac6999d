"""Sign-in throttling: a few wrong passwords, then a wait, per account and per client address.

Counts live in memory, so they are per process: each server worker counts on its own, and a
restart forgets them. That is enough to turn password guessing from thousands of tries a
minute into a handful; a program that runs many workers behind one address can lower the
limits. Settings (environment): RISKSET_LOGIN_FAILURES_PER_ACCOUNT (default 5),
RISKSET_LOGIN_FAILURES_PER_ADDRESS (default 20) and RISKSET_LOGIN_WINDOW_SECONDS (300).
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from .records import RecordsError

__all__ = ["LoginLimitError", "LoginLimiter", "limiter_from_environment"]

ACCOUNT_FAILURES = 5
# An address is often shared (an office's router, a shelter's wifi, a reverse proxy that
# does not pass the client on), so it gets more tries than one account does.
ADDRESS_FAILURES = 20
WINDOW_S = 300
# Bounded memory whatever an attacker sends: the least recently seen keys are forgotten.
MAX_KEYS = 10_000


class LoginLimitError(RecordsError):
    """A throttling setting in the environment is not usable."""


class LoginLimiter:
    """Sliding-window counts of sign-in tries by account and by address.

    Every try counts as a failure from the moment it starts (so a burst of parallel tries
    cannot all slip in before the first wrong one is counted); ``succeeded`` and ``abandoned``
    take it back.
    """

    def __init__(
        self,
        *,
        per_account: int = ACCOUNT_FAILURES,
        per_address: int = ADDRESS_FAILURES,
        window_s: float = WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = MAX_KEYS,
    ) -> None:
        self.per_account = per_account
        self.per_address = per_address
        self.window_s = window_s
        self._clock = clock
        self._max_keys = max_keys
        self._tries: OrderedDict[tuple[str, str], deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def attempt(self, address: str, username: str) -> int | None:
        """Count a try and return None, or refuse it: the seconds to wait before the next."""
        keys = self._keys(address, username)
        with self._lock:
            now = self._clock()
            wait = max(self._wait(key, limit, now) for key, limit in keys)
            if wait > 0:
                return math.ceil(wait)
            for key, _ in keys:
                self._recent(key, now).append(now)
            return None

    def succeeded(self, address: str, username: str) -> None:
        """The account's slate is wiped; the address keeps its other tries (one valid account
        must not wash away guesses at the others)."""
        account, place = (key for key, _ in self._keys(address, username))
        with self._lock:
            self._tries.pop(account, None)
            self._take_back(place)

    def abandoned(self, address: str, username: str) -> None:
        """The try got no answer (the database was down): it does not count."""
        with self._lock:
            for key, _ in self._keys(address, username):
                self._take_back(key)

    def _keys(self, address: str, username: str) -> list[tuple[tuple[str, str], int]]:
        account = ("account", username.strip().lower()[:128])
        return [(account, self.per_account), (("address", address), self.per_address)]

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        tries = self._tries.get(key)
        if tries is None:
            tries = self._tries[key] = deque()
            while len(self._tries) > self._max_keys:
                self._tries.popitem(last=False)
        self._tries.move_to_end(key)
        while tries and tries[0] <= now - self.window_s:
            tries.popleft()
        return tries

    def _wait(self, key: tuple[str, str], limit: int, now: float) -> float:
        tries = self._recent(key, now)
        if len(tries) < limit:
            return 0.0
        # The try that must age out of the window before there is room for one more.
        return tries[len(tries) - limit] + self.window_s - now

    def _take_back(self, key: tuple[str, str]) -> None:
        tries = self._tries.get(key)
        if tries:
            tries.pop()


def limiter_from_environment() -> LoginLimiter:
    return LoginLimiter(
        per_account=_setting("RISKSET_LOGIN_FAILURES_PER_ACCOUNT", ACCOUNT_FAILURES),
        per_address=_setting("RISKSET_LOGIN_FAILURES_PER_ADDRESS", ADDRESS_FAILURES),
        window_s=_setting("RISKSET_LOGIN_WINDOW_SECONDS", WINDOW_S),
    )


def _setting(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise LoginLimitError(f"{name} must be a whole number, 1 or more, not {raw!r}")
    return int(raw)
