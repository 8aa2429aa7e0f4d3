"""Stop strings on streamed text: cut at the first stop string, even when it spans several tokens.

Text that might be the start of a stop string is held back until the next token decides; everything else is
released at once, so streaming stays as live as the stop strings allow.
"""
from __future__ import annotations


class StopMatcher:
    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.matched: str | None = None  # the stop string reached (the earliest in the text)

    def feed(self, segment: str) -> tuple[str, bool]:
        """Add decoded text; returns (text safe to emit now, whether a stop string was reached)."""
        self.pending += segment
        if not self.stops:
            out, self.pending = self.pending, ""
            return out, False
        hits = [(index, stop) for index, stop in ((self.pending.find(s), s) for s in self.stops) if index >= 0]
        if hits:
            first, self.matched = min(hits, key=lambda hit: hit[0])
            out, self.pending = self.pending[:first], ""
            return out, True
        hold = max((self._overlap(stop) for stop in self.stops), default=0)
        cut = len(self.pending) - hold
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out

    def _overlap(self, stop: str) -> int:
        """Length of the longest suffix of the pending text that is a proper prefix of `stop`."""
        for size in range(min(len(stop) - 1, len(self.pending)), 0, -1):
            if self.pending.endswith(stop[:size]):
                return size
        return 0
