"""The reader thread of detect.predict (detect.inference.sources.prefetch): order, early stop, errors."""

from __future__ import annotations

import threading
import time

import pytest

from detect.inference.sources import prefetch


def _threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "detect-prefetch")


def test_prefetch_keeps_the_order_and_reads_ahead() -> None:
    read = []

    def frames():
        for i in range(50):
            read.append(i)
            yield i

    it = prefetch(frames(), depth=2)
    assert next(it) == 0
    time.sleep(0.2)
    assert len(read) >= 2  # the next frames were read while the consumer held the first
    assert [0, *it] == list(range(50))
    assert _threads() == 0


def test_stopping_early_stops_the_reader_before_returning() -> None:
    state = {"inside": False}

    def frames():
        for i in range(10_000):
            state["inside"] = True
            time.sleep(0.001)
            state["inside"] = False
            yield i

    it = prefetch(frames())
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    it.close()  # what detect.predict does before closing the source (a video capture)
    assert _threads() == 0 and not state["inside"]


def test_an_error_in_the_reader_is_raised_in_order() -> None:
    def frames():
        yield 1
        yield 2
        raise OSError("disk gone")

    it = prefetch(frames())
    assert next(it) == 1 and next(it) == 2
    with pytest.raises(OSError, match="disk gone"):
        next(it)
