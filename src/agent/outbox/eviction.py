"""Which stored batches go when the outbox is full or they are too old (the send order is the
outbox's own: agent.outbox.Outbox.pending).

The outbox is bounded by max_bytes (Outbox_MaxBytes), counted in whole batch files. A new
batch that does not fit evicts the stored batches of its own or a lower priority, the lowest
priority first and the oldest first within a priority; if even all of those do not make room,
the new batch is the lowest and newest of all and is the one that goes (rejected). A batch
larger than max_bytes on its own is refused. A batch expires when it is older than the
message timeout (IothubModule_MessageTimeout).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from agent.outbox.codec import RANK
from agent.record import record


class Stored(Protocol):
    """What the policy needs to know of a stored batch (agent.outbox.BatchInfo)."""

    @property
    def id(self) -> str: ...

    @property
    def prio(self) -> str: ...

    @property
    def seq(self) -> int: ...

    @property
    def created_ms(self) -> int: ...

    @property
    def size(self) -> int: ...


@record
class EvictionPolicy:
    """max_bytes: the bound of the stored batch files' bytes; timeout_ms: how old a batch may
    get. Both may change on a live outbox (a twin patch) and apply from the next decision."""

    max_bytes: int
    timeout_ms: int

    def refuses(self, size: int) -> bool:
        """A batch of `size` bytes can never be stored, whatever is evicted."""
        return size > self.max_bytes

    def room_for(self, stored: Iterable[Stored], stored_bytes: int, prio: str, size: int
                 ) -> list[str] | None:
        """The ids of the batches to evict so that a new batch of `size` bytes and priority
        `prio` fits beside `stored` (whose files hold `stored_bytes` bytes): [] when it fits
        as it is; None when it does not fit even after evicting every batch of its own and
        lower priorities (the new batch is then rejected and nothing is evicted)."""
        need = stored_bytes + size - self.max_bytes
        if need <= 0:
            return []
        rank = RANK[prio]
        candidates = sorted((b for b in stored if RANK[b.prio] >= rank),
                            key=lambda b: (-RANK[b.prio], b.seq))
        victims: list[str] = []
        for batch in candidates:
            victims.append(batch.id)
            need -= batch.size
            if need <= 0:
                return victims
        return None

    def expired(self, stored: Iterable[Stored], now_ms: int) -> list[str]:
        """The ids of the batches older than the timeout at now_ms, oldest (by sequence number)
        first. A batch exactly timeout_ms old is still valid."""
        old = [b for b in stored if now_ms - b.created_ms > self.timeout_ms]
        old.sort(key=lambda b: b.seq)
        return [b.id for b in old]
