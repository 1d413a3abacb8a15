"""What the gateway refused from the mesh, and why: counters per reason, the top offending
identities, and a log that says it once per peer and reason at WARNING.

Every refusal (a garbage announce, an identity not admitted, a bad signature, a quota hit,
a claim that contradicts this node's view) goes through `Defence.refused`. The counters are
shown by ``akitactl security`` and in ``status --json`` under "security"; the log line for
the first occurrence of a (peer, reason) pair is a WARNING, later ones are counted and
summarised at most once per `LOG_EVERY_S` per reason, so a flood cannot fill the log.
Peer-supplied text in a log line goes through `akita.text.clean`.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from akita.text import clean

log = logging.getLogger(__name__)

REASONS = ("garbage", "oversized", "impersonating", "not_admitted", "bad_signature",
           "over_quota", "claim_refused", "bad_key")
LOG_EVERY_S = 60.0
MAX_TRACKED_PEERS = 4096   # distinct (peer, reason) pairs remembered for first-time logging
TOP = 10


@dataclass
class Defence:
    """Counters and rate-limited logging of refusals (one per gateway)."""

    counts: Counter[str] = field(default_factory=Counter)
    offenders: Counter[str] = field(default_factory=Counter)
    _seen: dict[tuple[str, str], None] = field(default_factory=dict)
    _suppressed: Counter[str] = field(default_factory=Counter)
    _last_summary: dict[str, float] = field(default_factory=dict)

    def refused(self, reason: str, peer: str | None, detail: str = "") -> None:
        """Count one refusal; log it at WARNING the first time for this peer and reason."""
        self.counts[reason] += 1
        who = peer or "anonymous"
        if len(self.offenders) < MAX_TRACKED_PEERS or who in self.offenders:
            self.offenders[who] += 1
        key = (who, reason)
        if key not in self._seen and len(self._seen) < MAX_TRACKED_PEERS:
            self._seen[key] = None
            log.warning("refused from %s: %s%s", clean(who), reason,
                        f" ({clean(detail)})" if detail else "")
            return
        self._suppressed[reason] += 1
        now = time.monotonic()
        if now - self._last_summary.get(reason, float("-inf")) >= LOG_EVERY_S:
            self._last_summary[reason] = now
            log.warning("refused %d more %s from the mesh since the last report (counted; "
                        "see akitactl security)", self._suppressed.pop(reason), reason)

    def snapshot(self) -> dict[str, Any]:
        """The operator's view: counts per reason and the top offending identities."""
        return {"refused": {reason: self.counts.get(reason, 0) for reason in REASONS},
                "total": sum(self.counts.values()),
                "top_offenders": [{"id": who, "refused": n}
                                  for who, n in self.offenders.most_common(TOP)]}
