"""The door is one class made of many parts (one module per subject): a name two parts
define is silently taken from the first in the method resolution order, so one part's
helper would run in the other's place (a reconciliation helper once replaced the manual
reading's `_record`)."""

from __future__ import annotations

from collections import defaultdict

from openprepay.core.operations import Operations

# Defined by the base and meant to be shared, not overridden by accident.
SHARED = {"__init__", "__doc__", "__module__", "__qualname__", "__dict__", "__weakref__"}


def test_no_two_parts_of_the_door_define_the_same_name() -> None:
    owners: dict[str, list[str]] = defaultdict(list)
    for part in Operations.__mro__[1:]:
        if part is object or part.__module__.split(".")[-2:-1] != ["operations"]:
            continue
        for name in vars(part):
            if name not in SHARED:
                owners[name].append(part.__name__)
    clashes = {name: parts for name, parts in owners.items() if len(parts) > 1}
    assert not clashes, f"names defined by several parts of the door: {clashes}"
