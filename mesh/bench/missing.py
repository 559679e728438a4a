"""Figures a benchmark could not have: kept with their reason, never a traceback.

Owns the rule every ``hdpbf bench`` command follows.  A run measures for minutes; when
one figure cannot be had (RabbitMQ's counters do not catch up, a follower never reaches
the head, a node does not answer its status, Redis is gone), that figure is reported as
missing, with why, in the printout and in the JSON (``missing``: figure -> reason), and
everything else the run measured is kept.  A whole run that cannot go on (the broker
died under it) is one line of error, not a traceback.

Rules:
- Only what the world does makes a figure missing (``UNAVAILABLE``): a timeout, a
  refused or dropped connection, a broker or Redis that says no.  Our own bug (a
  TypeError, a KeyError, a failed assertion) still fails loudly.
- A figure partly measured is not a figure: a count that lost one of its snapshots is
  dropped whole, never reported from what was left.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Iterator

import click
from celery.exceptions import TimeoutError as CeleryTimeout
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

# OSError covers TimeoutError (and so the client's SubmitTimeout), socket errors and
# urllib's URLError; Celery's result timeout and kombu's and redis-py's errors are not
# OSErrors.
UNAVAILABLE: tuple[type[BaseException], ...] = (OSError, CeleryTimeout, OperationalError,
                                                RedisError)


def reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class Missing(dict):
    """figure -> why it is missing; a run's ``missing`` key."""

    def note(self, figures: str | Iterable[str], why: BaseException | str) -> None:
        text = why if isinstance(why, str) else reason(why)
        for figure in [figures] if isinstance(figures, str) else figures:
            self.setdefault(figure, text)

    @contextlib.contextmanager
    def guard(self, *figures: str) -> Iterator[None]:
        """Run the ``with`` body; if the world stops it, note ``figures`` as missing."""
        try:
            yield
        except UNAVAILABLE as exc:
            self.note(figures, exc)

    def say(self, say: Callable[[str], object]) -> None:
        for figure, why in self.items():
            say(f"missing: {figure} ({why})")


class BenchGroup(click.Group):
    """A click group whose commands end in one line of error, not a traceback, when the
    world stops a whole run (everything it had measured was already printed and kept by
    the command, or nothing was)."""

    def invoke(self, ctx: click.Context):
        from ..ops.broker_cluster import ClusterError
        try:
            return super().invoke(ctx)
        except (*UNAVAILABLE, ClusterError) as exc:  # a RabbitMQ node of the bench's own
            raise click.ClickException(f"the benchmark could not go on: {reason(exc)}") from None
