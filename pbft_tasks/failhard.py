"""How a worker process fails hard on our own bug.

Owns: ending the process at once with ``EX_SOFTWARE`` (70) when its node runtime has
stopped (``node.NodeFailed``): no acknowledgement of the message in hand, no Celery
shutdown (which would acknowledge, or run more of a half-stepped node).  RabbitMQ
redelivers every unacknowledged message; the supervisor (compose's restart policy,
``hdpbf up``'s respawn) starts the worker again, which rebuilds from its ledger.
Used by the task strategy (strategy.py) and the tick thread (celery_app.py).
"""
from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn

log = logging.getLogger("hdpbf.worker")

EX_SOFTWARE = 70  # sysexits.h: an internal software error


def fail_hard(what: str) -> NoReturn:
    log.critical("hdpbf worker: our own bug (%s); exiting %d without acknowledging, to "
                 "restart from the durable records", what, EX_SOFTWARE)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EX_SOFTWARE)
