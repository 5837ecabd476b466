"""What each meter's long-lived state leaves for the cyclic garbage collector.

A full collection walks every tracked object that is not frozen (core/app/vitals.py). The
per-meter objects that live as long as the meter are frozen once the heap settles; what a
poll replaces in them must then be something the collector does not track (an int, a
float, a str, a datetime, a tuple of those, a dict of those), or every full collection
walks one more object per meter per slot (issue 15: at 20,000 meters on two instances, ~39
objects per meter made a full collection pause ~350 ms). Each test fails on the state as it
was: a `PollJob` object per meter in the link's heap, a new plausibility reference and two
empty lists of episodes per reading, a `MeterState` and a `Fraction` per batch in the
meter's book, a `Fraction` in its accrual.
"""

from __future__ import annotations

import asyncio
import gc
from datetime import UTC, datetime, timedelta
from fractions import Fraction

from openprepay.core.app.plugins import Plugins
from openprepay.core.config.site import DeviceConfig
from openprepay.core.field.plausibility import PlausibilityCheck, device_limits
from openprepay.core.model import Sample
from openprepay.core.prepay.meter_book import MeterBook
from openprepay.core.rating.layout import MeterState
from openprepay.core.rating.rounding import Accrual, Rounding

from ..field.test_arbiter_scheduling import make_worker, run_briefly

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def tracked_referents(obj: object, *allowed: object) -> list[object]:
    """What `obj` refers to that the collector still tracks after a collection (its class
    and the objects in `allowed` aside: long-lived containers changed in place)."""
    # Twice: a tuple is untracked once its items are, and one collection may look at a
    # tuple before the tuple inside it.
    gc.collect()
    gc.collect()
    allowed = (type(obj), *allowed)
    return [
        o for o in gc.get_referents(obj) if gc.is_tracked(o) and all(o is not a for a in allowed)
    ]


async def test_the_polls_waiting_in_a_link_heap_are_not_tracked() -> None:
    worker, _, _, _ = make_worker(n=5, interval=0.05)

    async def body() -> None:
        await asyncio.sleep(0.3)  # every meter polled and scheduled again

    await run_briefly(worker, body)
    # One link polls one meter at a time: the meter in flight when the worker was
    # cancelled is out of the heap.
    waiting = {job[2] for job in worker._polls}
    assert len(waiting) >= 4 and waiting <= {f"m{n}" for n in range(5)}
    gc.collect()
    assert [job for job in worker._polls if gc.is_tracked(job)] == []


def test_the_plausibility_reference_moves_on_in_place() -> None:
    model = Plugins.load().models["acrel.DDSY1352"]
    device = DeviceConfig("E-1", model.name, "gw", 1)
    check = PlausibilityCheck(model, device_limits(model, device))
    for n in range(3):
        at = T0 + timedelta(seconds=10 * n)
        check.assess(Sample("E-1", model, at, {"energy_total": 1000.0 + n / 100}))
        if n == 0:
            reference = check._reference
    assert check._reference is reference  # one object for the meter's life
    assert reference is not None and reference.values == {"energy_total": 1000.02}
    assert reference.confirmed
    assert tracked_referents(reference) == []
    # No episode started or ended: nothing new per reading (two lists each time, before).
    assert check.started == () and check.ended == ()
    assert not gc.is_tracked(check.started) and not gc.is_tracked(check.ended)


def test_a_meter_book_keeps_its_state_and_pending_cost_untracked() -> None:
    book = MeterBook.opened("A-1", "prepaid", MeterState(), T0, timedelta(minutes=5))
    for n in range(3):
        book.state = MeterState(1_700_000_000 + n, (1000 + n, 0, 0), 1_690_000_000, 10 * n, None)
        book.pending_cost += Fraction(1, 3)
    assert book.state == MeterState(1_700_000_002, (1002, 0, 0), 1_690_000_000, 20, None)
    assert book.pending_cost == Fraction(1)
    assert tracked_referents(book, book.days) == []


def test_an_accrual_keeps_its_exact_sum_untracked() -> None:
    accrual = Accrual(rounding=Rounding.HALF_EVEN)
    posted = [accrual.add(Fraction(7, 3)) for _ in range(3)]
    assert posted == [2, 3, 2] and accrual.cum_exact_fen == 7
    assert accrual == Accrual(Fraction(7), 7, Rounding.HALF_EVEN)
    assert accrual != Accrual(Fraction(7), 7)
    assert repr(accrual) == (
        "Accrual(cum_exact_fen=Fraction(7, 1), posted_fen=7, rounding=<Rounding.HALF_EVEN: "
        "'half_even'>)"
    )
    assert Accrual.from_record(accrual.to_record()) == accrual
    assert tracked_referents(accrual, accrual.rounding) == []
