"""A TCP proxy between one worker and RabbitMQ that a fault scenario can cut and heal.

Owns: the real mesh's meaning of ``cut`` (tests/faults/scenario.py).  The worker is
started with ``HDPBF_BROKER_URL`` pointing here (pbft_tasks/celery_app.py); every
connection it opens (Celery's consumer, the node's publisher, events) is piped to the
broker byte for byte.  ``cut()`` closes every piped connection at once (both sockets,
with RST, as a dead link would look after its timeout) and, until ``heal()``, accepts
and closes at once each new attempt, so the worker's reconnect loops spin.  The broker
meanwhile keeps the worker's durable queue: peers' messages wait there, and what the
worker had taken without acknowledging is requeued and delivered again after the heal.

One thread accepts; each connection has one thread per direction.  No asyncio: the
runner is synchronous and the proxy must run while it waits.
"""
from __future__ import annotations

import socket
import struct
import threading


class CuttableProxy:
    def __init__(self, target: tuple[str, int] = ("127.0.0.1", 5672)):
        self.target = target
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._cut = False
        self._closed = False
        self.refused = 0
        self.accepted = 0
        self._thread = threading.Thread(target=self._accept_loop, name=f"proxy:{self.port}",
                                        daemon=True)
        self._thread.start()

    def url_for(self, broker_url: str) -> str:
        """``broker_url`` with its host:port replaced by this proxy's."""
        scheme, rest = broker_url.split("://", 1)
        creds, _, hostpath = rest.rpartition("@")
        path = hostpath.split("/", 1)[1] if "/" in hostpath else ""
        return f"{scheme}://{creds + '@' if creds else ''}127.0.0.1:{self.port}/{path}"

    # -- faults -------------------------------------------------------------------------
    def cut(self) -> int:
        """Drop every connection now and refuse new ones; returns how many were dropped."""
        with self._lock:
            self._cut = True
            pairs, self._pairs = self._pairs, []
        for a, b in pairs:
            _abort(a)
            _abort(b)
        return len(pairs)

    def heal(self) -> None:
        with self._lock:
            self._cut = False

    def close(self) -> None:
        self._closed = True
        self.cut()
        try:
            self.listener.close()
        except OSError:
            pass

    # -- plumbing ------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                cut = self._cut
            if cut or self._closed:
                self.refused += 1
                _abort(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _abort(client)
                continue
            with self._lock:
                if self._cut:
                    _abort(client)
                    _abort(upstream)
                    continue
                self._pairs.append((client, upstream))
                self.accepted += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _abort(src)
            _abort(dst)
            with self._lock:
                self._pairs = [p for p in self._pairs if src not in p]


def _abort(s: socket.socket) -> None:
    """Close with a bare RST (SO_LINGER 0), so that both ends notice at once.

    ``shutdown(SHUT_RD)`` first wakes a thread of ours blocked in recv on it and sends
    nothing.  Not SHUT_RDWR: that sends a FIN before the RST, and a peer that gets FIN
    then RST fails with EPIPE, a BrokenPipeError out of ``connect()`` itself when both
    arrive before the connecting thread reads the socket's error (the flake of
    test_proxy.py: about half of all refused connections did that)."""
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        s.shutdown(socket.SHUT_RD)
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass
