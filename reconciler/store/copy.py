"""``reconciler store copy --from … --to …``: every record of one store into an empty other.

Intents (retired history included), operations (every attempt) and epochs are read from
the source and written into the target in one transaction, exactly as they are (versions,
epoch ids, times, JSON), so the target continues where the source stopped: the next daemon
on it neither re-runs nor re-probes anything the source had settled. A target that holds
anything is refused (nothing is merged). Stop the daemon writing to the source first: a
source that changes during the copy is detected (an operation whose intent was not read)
and refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.errors import StoreError
from reconciler.store.protocol import Store

__all__ = ["CopyReport", "copy_store"]


@dataclass(frozen=True)
class CopyReport:
    """What :func:`copy_store` wrote."""

    intents: int
    operations: int
    epochs: int

    def __str__(self) -> str:
        return (f"copied {self.intents} intents, {self.operations} operations and "
                f"{self.epochs} epochs")


def copy_store(source: Store, target: Store) -> CopyReport:
    """Copy every intent, operation and epoch of ``source`` into the empty ``target``.

    Raises StoreError, having written nothing, when the target is not empty or the source
    changed while it was read.
    """
    if target.epoch() is not None or target.intents(include_retired=True) or target.operations():
        raise StoreError("the target state store is not empty: copy only into a new one "
                         "(nothing was written)")
    intents = source.intents(include_retired=True)
    operations = source.operations()
    epochs = source.epochs()
    strays = {o.spec_hash for o in operations} - set(intents)
    if strays:
        raise StoreError(f"the source state store changed during the copy ({len(strays)} "
                         "intents appeared); stop the daemon using it and copy again "
                         "(nothing was written)")
    target.restore(intents.values(), operations, epochs)
    return CopyReport(len(intents), len(operations), len(epochs))
