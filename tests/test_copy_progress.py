"""Progress of a whole-queue copy: reported while the one call into C runs."""

from __future__ import annotations

import threading
import time
from typing import Iterator, List

import pytest

from ipcbind import MessageQueue, _seam
from ipcbind.msg import copy_all

# MSG_COPY walks the queue from its head on every call: 8,000 messages take about
# half a second here, a few hundred reports at a 1 ms interval.
LONG = 8000


@pytest.fixture
def long_queue() -> Iterator[MessageQueue]:
    with MessageQueue.create() as q:
        q.send_many([(1 + i % 3, b"") for i in range(LONG)])
        yield q


def test_a_long_copy_reports_counts_that_only_grow_up_to_the_queue_length(
        long_queue: MessageQueue) -> None:
    reports: List[int] = []
    got = _seam.msgcopy_all(long_queue.id, reports.append, 0.001)
    assert got is not None and len(got[0]) == LONG
    # Each report is a count the C loop had reached: more than none, at most all.
    assert all(0 < r <= LONG for r in reports)
    assert reports == sorted(set(reports))
    # Reports come from a watcher thread only while the copy runs: a copy of half a
    # second gives it hundreds of turns, and one that never ran would prove nothing.
    assert reports, "the watcher never reported during a copy of half a second"


def test_no_report_comes_after_the_copy_returned(long_queue: MessageQueue) -> None:
    reports: List[int] = []
    before = threading.active_count()
    _seam.msgcopy_all(long_queue.id, reports.append, 0.001)
    seen = len(reports)
    time.sleep(0.05)
    assert len(reports) == seen
    assert threading.active_count() == before


def test_an_exception_in_the_report_is_raised_by_the_copy_and_the_queue_is_untouched(
        long_queue: MessageQueue) -> None:
    class Stop(Exception):
        pass

    def refuse(done: int) -> None:
        raise Stop(done)

    with pytest.raises(Stop):
        _seam.msgcopy_all(long_queue.id, refuse, 0.001)
    assert len(long_queue) == LONG
    # The lent copy buffers went back: the next copy gets them.
    assert len(copy_all(long_queue.id)) == LONG


def test_copy_all_with_a_report_copies_what_peek_all_copies(long_queue: MessageQueue) -> None:
    reports: List[int] = []
    assert copy_all(long_queue.id, copied=reports.append) == long_queue.peek_all()
