"""Stopping a run cleanly: Ctrl-C as a request honoured between steps, shared by every process."""

from __future__ import annotations

import contextlib
import signal

from detect.training.config import Echo
from detect.training.distributed import Dist

__all__ = ["GracefulStop", "shared_stop"]


class GracefulStop:
    """Ctrl-C as a request the loop honours at the next iteration boundary (and never in the
    middle of a checkpoint write), instead of an exception that could land half-way through
    an optimizer step. A third Ctrl-C, outside a save, stops at once."""

    def __init__(self, echo: Echo) -> None:
        self.echo = echo
        self.requests = 0
        self.saving = False
        self.installed = False

    def __enter__(self) -> "GracefulStop":
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self.installed = True
        except ValueError:  # not the main thread: Ctrl-C stays an exception
            pass
        return self

    def __exit__(self, *exc) -> None:
        if self.installed:
            signal.signal(signal.SIGINT, self._previous)

    def __call__(self) -> bool:
        return self.requests > 0

    def _handle(self, signum, frame) -> None:
        self.requests += 1
        if self.requests == 1:
            self.echo("\nCtrl-C: stopping after this step and saving last.pt (Ctrl-C twice more to stop at once)",
                      err=True)
        elif self.saving or self.requests == 2:
            self.echo("Ctrl-C: still finishing; last.pt is being written whole", err=True)
        else:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def save(self):
        self.saving = True
        try:
            yield
        finally:
            self.saving = False


def shared_stop(stop: GracefulStop, dist: Dist, *, every: int):
    """``stop_now()``: whether any process was asked to stop, asked of all processes together
    every ``every`` calls (and at once with ``force=True``) so they stop at the same step."""
    calls = 0

    def stop_now(force: bool = False) -> bool:
        nonlocal calls
        if not dist.active:
            return stop()
        calls += 1
        if force or calls % every == 0:
            return dist.any(stop())
        return False

    return stop_now


