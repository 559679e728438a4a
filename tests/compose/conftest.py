"""Fixtures of the compose tests: one private Docker daemon per run with the images the
compose file names (tests/compose/private_docker.py), and the compose project copy the
tests drive (tests/compose/compose_stack.py).

Everything is built once per run and reused by every test here; the daemon, its images,
containers, volumes, networks and files are removed at the end, pass or fail.  The base
image's root file system stays in the user's cache for the next run
(private_docker.cache_dir(), ~/.cache/hdpbf).  Nothing
skips: without root, dockerd or debootstrap the fixture fails saying what to install
(tests/bootstrap.sh installs docker.io and debootstrap).  Times of each step go to the
terminal summary (``-rA`` not needed: printed at the end of the session).
"""
from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compose_stack import ROOT, Project  # noqa: E402
from private_docker import (PrivateDockerd, WheelServer, build_base, build_standins,  # noqa: E402
                            complete_wheels, container_markers, download_wheels)

# debootstrap's .deb cache: apt's own archive, so a second run downloads nothing
DEB_CACHE = Path("/var/cache/apt/archives")
TIMES: dict[str, float] = {}


class Timer:
    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        self.t0 = time.monotonic()
        return self

    def __exit__(self, *exc):
        TIMES[self.name] = time.monotonic() - self.t0


@pytest.fixture(scope="session")
def docker_env(tmp_path_factory):
    """The private daemon with the base image, the stand-ins and a wheel server for the
    project's build; yields (daemon, compose/.env lines for the build)."""
    if os.geteuid() != 0:
        pytest.fail("the compose tests start a Docker daemon of their own and need root "
                    "(CI and the README's test command run as root)", pytrace=False)
    dk = PrivateDockerd()
    server = None
    t0 = time.monotonic()
    try:
        with Timer("dockerd start"):
            dk.start()
        wheels = tmp_path_factory.mktemp("wheels")
        with Timer("base image, wheels downloaded meanwhile") as t:
            with ThreadPoolExecutor(1) as pool:
                download = pool.submit(download_wheels, wheels)
                t.name += f" ({build_base(dk, DEB_CACHE)})"
                download.result()
        with Timer("stand-ins"):
            build_standins(dk, ROOT / "compose" / "docker-compose.yml")
        complete_wheels(wheels, container_markers(dk, "python:3.11-slim"))
        server = WheelServer(wheels, dk.bridge_ip)
        yield dk, server.env()
    finally:
        if server is not None:
            server.stop()
        with Timer("cleanup"):
            dk.stop()
        TIMES["compose tests, all"] = time.monotonic() - t0


@pytest.fixture(scope="module")
def project(docker_env, tmp_path_factory):
    dk, build_env = docker_env
    base = tmp_path_factory.mktemp("compose")  # commands.log stays with pytest's last runs
    proj = Project(base, dk.env, build_env)
    proj.dk = dk
    yield proj
    # containers and volumes of this project go with the daemon (docker_env); the copy
    # (keys included) goes here
    import shutil
    shutil.rmtree(proj.dir, ignore_errors=True)


def pytest_terminal_summary(terminalreporter):
    if TIMES:
        terminalreporter.write_sep("-", "compose tests: seconds per step")
        for name, secs in TIMES.items():
            terminalreporter.write_line(f"{secs:8.1f}  {name}")
