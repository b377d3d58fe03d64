"""heap.keeping (a cold read of the store, a converging pass over many services): the collector
paused while work keeps many objects, and what a large one kept frozen afterwards (not walked
again by every collection)."""

from __future__ import annotations

import gc

from converge.heap import FREEZE_YOUNG, keeping


def test_a_read_that_keeps_many_objects_freezes_them_and_a_small_one_does_not() -> None:
    assert gc.isenabled()
    try:
        before = gc.get_freeze_count()
        with keeping():
            assert not gc.isenabled()
            small = [{"n": [i]} for i in range(100)]
        assert gc.isenabled() and gc.get_freeze_count() == before
        with keeping():
            kept = [{"n": [i]} for i in range(FREEZE_YOUNG)]
        assert gc.isenabled()
        assert gc.get_freeze_count() >= before + 2 * FREEZE_YOUNG  # the dicts and lists kept
        assert gc.get_count()[0] < 100  # nothing young left for the next collection to walk
        assert len(small) == 100 and len(kept) == FREEZE_YOUNG
    finally:
        gc.unfreeze()


def test_a_paused_collector_stays_paused() -> None:
    gc.disable()
    try:
        with keeping():
            kept = [{"n": [i]} for i in range(FREEZE_YOUNG)]
        assert not gc.isenabled() and len(kept) == FREEZE_YOUNG
    finally:
        gc.enable()
        gc.unfreeze()
