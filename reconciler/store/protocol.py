"""What the rest of the reconciler needs of a state store, whichever backend holds it.

Two backends implement it: :class:`reconciler.store.sqlite.Store` (embedded, the default)
and :class:`reconciler.store.postgres.PostgresStore` (shared by replicas). Both persist the
:class:`~reconciler.model.lifecycle.Step` they are given in one transaction, as a
compare-and-set on the intent's ``version``, decide nothing, and read back records equal
to the ones written. :func:`reconciler.store.open_store` picks one by the location.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from datetime import datetime
from typing import Protocol, runtime_checkable

from reconciler.model.lifecycle import Step
from reconciler.model.records import Epoch, IntentRecord, OperationRecord

__all__ = ["Store"]


@runtime_checkable
class Store(Protocol):
    """A state store: the methods the engine, daemon, metrics, CLI and status use."""

    #: finished, superseded or orphaned intents kept per manifest name by :meth:`prune`
    retention: int
    #: whether replicas share it (PostgreSQL): leadership by its advisory lock, and a
    #: server that can go away under a running daemon
    shared: bool

    # ------------------------------------------------------------------ reads

    def intents(self, *, include_retired: bool = False) -> dict[str, IntentRecord]:
        """Recorded intents by spec hash (by default only those not retired)."""
        ...

    def intent(self, spec_hash: str) -> IntentRecord | None:
        """One intent, or None when it is not recorded."""
        ...

    def intents_named(self, name: str) -> list[IntentRecord]:
        """Every intent of one manifest, oldest first (history included)."""
        ...

    def latest_by_name(self) -> dict[str, IntentRecord]:
        """The most recently changed intent of every manifest name ever recorded."""
        ...

    def operations(self, *, name: str | None = None) -> list[OperationRecord]:
        """Operations (attempts), oldest first; optionally of one manifest."""
        ...

    def latest_windows(self) -> dict[str, str]:
        """The latest window recorded per manifest name, history included."""
        ...

    def recent_durations(self, *, limit: int = 5000) -> list[tuple[str, str, float]]:
        """(service, command, seconds to success) of the latest successes, newest first."""
        ...

    def names(self) -> set[str]:
        """Every manifest name recorded (history included)."""
        ...

    def generation(self) -> Hashable | None:
        """A token that differs whenever anything was written since (by any process);
        None when the backend cannot tell cheaply, so readers must read again."""
        ...

    # ------------------------------------------------------------------ writes

    def save(self, step: Step) -> bool:
        """Persist one step in one transaction; False (nothing written) when the stored
        record is no longer at ``step.expect_version``."""
        ...

    def prune(self) -> int:
        """Drop the oldest finished history beyond :attr:`retention` per manifest name."""
        ...

    # ------------------------------------------------------------------ epochs

    def begin_epoch(self, *, reason: str, holder: str, now: datetime) -> Epoch:
        """Start a new epoch (nothing is sent until its adoption pass is done)."""
        ...

    def epoch(self) -> Epoch | None:
        """The latest epoch, or None for a store that never had one."""
        ...

    def adopted(self, epoch: Epoch, *, now: datetime) -> Epoch:
        """Record that ``epoch``'s adoption pass probed every desired intent."""
        ...

    # ------------------------------------------------------------------ whole store

    def epochs(self) -> list[Epoch]:
        """Every epoch, oldest first (``store copy``)."""
        ...

    def restore(self, intents: Iterable[IntentRecord], operations: Iterable[OperationRecord],
                epochs: Iterable[Epoch]) -> None:
        """Write whole records as they are into an empty store, in one transaction
        (``store copy``); StoreError, and nothing written, when it is not empty."""
        ...

    def snapshot(self) -> Store:
        """An in-memory (SQLite) copy: changing it never touches this store."""
        ...

    @property
    def schema_version(self) -> int:
        """The schema version the store is at."""
        ...

    def check(self) -> None:
        """Raise StoreError unless the store is whole (``store check``)."""
        ...

    def close(self) -> None:
        ...

    def __enter__(self) -> Store:
        ...

    def __exit__(self, *exc: object) -> None:
        ...
