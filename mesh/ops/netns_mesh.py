"""A mesh whose validators and followers each run on a host of their own (mesh/ops/netns.py).

Owns: laying out a mesh for a namespace topology (mesh.json names the broker host's
address, so workers and followers reach RabbitMQ and Redis only over their links),
starting each validator's worker inside its namespace, and the root-side Celery app
that the test or benchmark uses to talk to the same vhost through 127.0.0.1.
Hosts are named ``v<id>`` (validators) and follower names (``f1`` ..).
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

from .followers import Followers
from .launcher import LocalMesh, node_env, worker_command
from .netns import Topology
from pbft_tasks.topology import DEFAULT_RESULT_BACKEND, MeshConfig, add_followers, init_mesh


class WrappedLocalMesh(LocalMesh):
    """``LocalMesh`` whose workers start under a command prefix (``ip netns exec``)."""

    def __init__(self, config_path: str, wrap: Callable[[int], list[str]], app: Any = None,
                 log_dir: Optional[str] = None) -> None:
        super().__init__(config_path, app=app, log_dir=log_dir)
        self.wrap = wrap

    def start(self, nodes: Optional[list[int]] = None) -> None:
        for i in nodes if nodes is not None else [n.id for n in self.cfg.nodes]:
            env = {**node_env(self.config_path, i), **self.extra_env.get(i, {})}
            with open(os.path.join(self.log_dir, f"node{i}.log"), "ab") as logf:
                self.procs[i] = subprocess.Popen([*self.wrap(i), *worker_command(i)], env=env,
                                                 stdout=logf, stderr=subprocess.STDOUT,
                                                 stdin=subprocess.DEVNULL, start_new_session=True)


def _vhost(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


class NetnsMesh:
    """n validators and ``followers`` followers, one namespace each, plus the broker host.

    ``root_broker_url``/``root_backend``: how this (root-namespace) process reaches the
    same RabbitMQ vhost and Redis (127.0.0.1)."""

    def __init__(self, base: Path, n: int, followers: int, root_broker_url: str,
                 root_backend: str = DEFAULT_RESULT_BACKEND, prefix: str = "hfol",
                 **settings: Any) -> None:
        self.names = [f"f{j}" for j in range(1, followers + 1)]
        self.topo = Topology([f"v{i}" for i in range(n)] + self.names, prefix=prefix)
        vhost = _vhost(root_broker_url)
        init_mesh(base, nodes=n, broker_url=self.topo.broker_url(vhost),
                  result_backend=self.topo.redis_url(int(_vhost(root_backend) or 0)), force=True)
        if self.names:
            add_followers(base, self.names)
        cfg = MeshConfig.load(base)
        for k, v in settings.items():
            setattr(cfg, k, v)
        cfg.save(base / "mesh.json")
        self.config_path = str(base / "mesh.json")
        self.cfg = MeshConfig.load(self.config_path)
        from celery import Celery

        from pbft_tasks.brokers import celery_settings
        self.app = Celery(f"hdpbf-netns-{id(self)}", set_as_current=False)
        self.app.conf.update(celery_settings(root_broker_url, root_backend))
        self.local = WrappedLocalMesh(self.config_path, lambda i: self.topo.wrap(f"v{i}"),
                                      app=self.app)
        self.followers = Followers(self.config_path, log_dir=self.local.log_dir)
        for name in self.names:
            self.followers.wrap[name] = self.topo.wrap(name)

    def up(self, timeout: float = 120.0) -> "NetnsMesh":
        self.topo.up()
        try:
            self.local.purge()
            self.followers.purge(self.app)
            self.local.start()
            self.local.wait_ready(timeout=timeout)
            if self.names:
                self.followers.start()
                self.followers.wait_started(timeout=timeout)
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        try:
            self.followers.stop()
        finally:
            try:
                self.local.stop()
            finally:
                self.topo.down()

    def __enter__(self) -> "NetnsMesh":
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()


__all__ = ["NetnsMesh", "WrappedLocalMesh"]
