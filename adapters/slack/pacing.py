"""How often a streamed reply may be edited: at most once per interval per message, and slower when many replies
stream at once in one workspace, because ``chat.update`` has one budget per workspace (Tier 3, about 50 a minute).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager


class UpdatePacer:
    def __init__(self, *, min_interval_s: float, budget_per_min: int) -> None:
        self._min_interval_s = min_interval_s
        self._budget_per_min = budget_per_min
        self._active: Counter[str] = Counter()

    @contextmanager
    def streaming(self, workspace: str) -> Iterator[None]:
        """Count one reply edited in ``workspace`` for as long as the block runs."""
        self._active[workspace] += 1
        try:
            yield
        finally:
            self._active[workspace] -= 1
            if self._active[workspace] <= 0:
                del self._active[workspace]

    @property
    def min_interval_s(self) -> float:
        return self._min_interval_s

    def active(self, workspace: str) -> int:
        return self._active[workspace]

    def interval(self, workspace: str) -> float:
        """Seconds between two edits of one message, given how many replies share the workspace's budget now."""
        sharing = max(1, self._active[workspace])
        return max(self._min_interval_s, 60.0 * sharing / self._budget_per_min)
