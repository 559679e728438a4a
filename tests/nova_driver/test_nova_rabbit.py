"""nova 34's own ComputeAPI client and a compute server on nova's serializer, both on
``hdpbf+rabbit://`` against the real RabbitMQ.  The
cases live in nova_cases/rabbit_case.py and run in a process of their own (subproc.py):
first call step 2, second step 1 with the same token, a third from a second API host's
ledger copy step 1; a terminate invalidates; an unrelated cast and call pass through
with identical bodies and replies to plain ``rabbit://``; the stand-ins (``hdpbf
compute``, the reader) interoperate with nova's client and serializer both ways."""
from __future__ import annotations

import socket

import pytest

from .subproc import run_case

pytestmark = pytest.mark.broker


def test_novas_compute_api_over_hdpbf_rabbit():
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=3).close()
    except OSError:
        pytest.fail("RabbitMQ is not reachable at 127.0.0.1:5672 (never skipped): start it "
                    "with rabbitmq-server -detached", pytrace=False)
    out = run_case("rabbit_case.py")
    assert "4 passed" in out, out[-4000:]
