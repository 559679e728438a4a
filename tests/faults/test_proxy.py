"""The cuttable TCP proxy (proxy.py) against a local echo server: bytes pass, a cut
drops the live connection and refuses new ones, a heal lets new ones through."""
from __future__ import annotations

import socket
import threading

import pytest

from .proxy import CuttableProxy


@pytest.fixture
def echo():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)

    def serve():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=_echo, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield srv.getsockname()
    srv.close()


def _echo(conn):
    with conn:
        try:
            while data := conn.recv(4096):
                conn.sendall(data)
        except ConnectionResetError:  # a cut resets the upstream side too, as a dead link
            pass


def _roundtrip(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"ping")
        return s.recv(4)


def _dead(s: socket.socket) -> bool:
    """True once the peer has closed or reset the connection."""
    try:
        s.sendall(b"x")
        return s.recv(1) == b""
    except OSError:
        return True


def _refused(port: int) -> bool:
    """True if a new connection is reset.  The proxy accepts and resets it at once, so
    the reset surfaces in ``connect()`` itself when it arrives before the connecting
    thread reads the socket's state, else at the first read or write."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
    except ConnectionResetError:
        return True
    with s:
        return _dead(s)


def test_cut_drops_and_refuses_heal_lets_through(echo):
    proxy = CuttableProxy(echo)
    try:
        assert _roundtrip(proxy.port) == b"ping"
        live = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        live.sendall(b"abcd")
        assert live.recv(4) == b"abcd"
        assert proxy.cut() >= 1
        assert _dead(live)
        live.close()
        assert all(_refused(proxy.port) for _ in range(50)), \
            "a new connection must be refused while cut"
        assert proxy.refused >= 50
        proxy.heal()
        assert _roundtrip(proxy.port) == b"ping"
    finally:
        proxy.close()
