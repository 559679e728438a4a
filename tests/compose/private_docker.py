"""A private Docker daemon for the compose tests, and the images compose/docker-compose.yml
names, built inside it with no registry.

Owns: starting ``dockerd`` with a data root, exec root, socket and bridge of its own (the
bridge is made here, on a subnet no route of this machine uses, and given to the daemon
with ``-b``; user-defined networks come from an address pool beside it), with
``--iptables=false --ip-forward=false --ip-masq=false`` so nothing of the host's firewall or
forwarding changes; and removing everything it made at the end: containers, images,
volumes, networks, the daemon, its bridge and its files.  It never talks to another daemon:
every command it runs gets ``DOCKER_HOST`` of its own socket.

The images, none of them from a registry:
- a Debian bookworm base, ``debootstrap --variant=minbase`` from the mirror apt is
  configured with (``apt-get indextargets``), with the packages the stand-ins need, then
  ``docker import``; the root file system's tar is kept in the user's cache
  (``$XDG_CACHE_HOME/hdpbf``, else ``~/.cache/hdpbf``), named by a digest of what went
  into it (suite, mirror, packages, dpkg settings), so a later run imports it instead of
  running debootstrap again (delete the file to rebuild it; other bases are removed);
- stand-ins for the third-party images the compose file names (tests/compose/standins/:
  RabbitMQ with the management plugin, Redis, Prometheus, and python:3.11-slim, the base
  of compose/Dockerfile), tagged with the compose file's names;
- the project's image is built by compose itself from compose/Dockerfile; containers have
  no internet, so its pip gets wheels built on this host, served to the build from the
  bridge's address through the Dockerfile's PIP_* build arguments (``WheelServer``).
"""
from __future__ import annotations

import functools
import hashlib
import http.server
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
STANDINS = HERE / "standins"
BASE_TAG = "hdpbf-test/bookworm:base"
# What the stand-ins need beside minbase (python3-venv for the python:3.11-slim stand-in).
BASE_PACKAGES = ("python3", "python3-venv", "rabbitmq-server", "redis-server", "prometheus",
                 "wget", "procps")
# Grafana has no Debian package: it is never started in the tests (--scale grafana=0),
# and its image name is given the base image so that compose asks no registry for it.
NOT_RUN = {"grafana/grafana"}
STANDIN_FOR = {"rabbitmq": "rabbitmq", "redis": "redis", "prom/prometheus": "prometheus",
               "python": "python"}


def run(argv: list[str], env: dict | None = None, timeout: float = 600, check: bool = True,
        **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, **kw)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:6])}... exited {res.returncode}:\n"
                           f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise RuntimeError(f"{tool} is not installed: tests/bootstrap.sh, the first step of the "
                           f"README's test command, installs it (Debian packages docker.io, "
                           f"debootstrap)")
    return path


def apt_mirror(codename: str = "bookworm") -> str:
    """The Debian mirror apt is configured with for ``codename`` main."""
    out = run(["apt-get", "indextargets", "--format",
               "$(REPO_URI) $(CODENAME) $(COMPONENT) $(CREATED_BY)"]).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[1:] == [codename, "main", "Packages"]:
            return parts[0]
    raise RuntimeError(f"apt has no source for {codename} main (apt-get indextargets):\n{out}")


def free_subnets(count: int) -> list[ipaddress.IPv4Network]:
    """``count`` /16 networks in 10.0.0.0/8 that no route or address of this machine
    touches (the first for the bridge, the next for compose's networks)."""
    used = []
    for cmd in (["ip", "-4", "route", "show", "table", "all"], ["ip", "-4", "addr"]):
        for m in re.finditer(r"(\d+\.\d+\.\d+\.\d+)(/\d+)?", run(cmd).stdout):
            try:
                used.append(ipaddress.ip_network(m.group(1) + (m.group(2) or "/32"), strict=False))
            except ValueError:
                pass
    out = []
    for second in range(213, 256):
        net = ipaddress.ip_network(f"10.{second}.0.0/16")
        if not any(net.overlaps(u) for u in used if u.prefixlen > 0):
            out.append(net)
            if len(out) == count:
                return out
    raise RuntimeError("no free 10.x.0.0/16 for the private Docker daemon's networks")


class PrivateDockerd:
    """One dockerd of our own; ``env`` is what every docker/compose command runs with."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="hdpbf-dk-", dir="/tmp"))
        self.bridge = f"hdpbfdk{os.getpid() % 100000}"
        bridge_net, pool = free_subnets(2)
        self.bridge_ip = str(next(bridge_net.hosts()))
        self.bridge_cidr = f"{self.bridge_ip}/24"
        self.pool = str(pool)
        self.sock = self.root / "docker.sock"
        self.proc: subprocess.Popen | None = None
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("PIP_", "DOCKER_", "COMPOSE_"))}
        self.env["DOCKER_HOST"] = f"unix://{self.sock}"
        self.env["DOCKER_CONFIG"] = str(self.root / "client")

    def start(self, timeout: float = 120) -> None:
        require("dockerd")
        run(["ip", "link", "add", self.bridge, "type", "bridge"])
        run(["ip", "addr", "add", self.bridge_cidr, "dev", self.bridge])
        run(["ip", "link", "set", self.bridge, "up"])
        (self.root / "client").mkdir()
        argv = ["dockerd", "--data-root", str(self.root / "data"),
                "--exec-root", str(self.root / "exec"), "-H", f"unix://{self.sock}",
                "--pidfile", str(self.root / "dockerd.pid"), "-b", self.bridge,
                "--default-address-pool", f"base={self.pool},size=24",
                "--iptables=false", "--ip-forward=false", "--ip-masq=false",
                "--userland-proxy=true", "--log-level=warn"]
        with open(self.root / "dockerd.log", "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while self.docker("version", check=False).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the private dockerd did not start:\n" + self.log_tail())
            time.sleep(0.5)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return (self.root / "dockerd.log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def docker(self, *args: str, check: bool = True, timeout: float = 600,
               env_extra: dict | None = None, **kw) -> subprocess.CompletedProcess:
        return run(["docker", *args], env=dict(self.env, **(env_extra or {})), check=check,
                   timeout=timeout, **kw)

    def stop(self) -> None:
        """Remove every container, image, volume and network of this daemon, stop it, and
        remove its bridge, mounts and files."""
        errors = []
        if self.proc is not None and self.proc.poll() is None:
            ids = self.docker("ps", "-aq", check=False).stdout.split()
            if ids:
                self.docker("rm", "-f", "-v", *ids, check=False)
            self.docker("system", "prune", "-a", "-f", "--volumes", check=False, timeout=300)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                errors.append("dockerd did not stop on SIGTERM; killed")
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        for line in reversed(Path("/proc/mounts").read_text().splitlines()):
            target = line.split()[1]
            if target.startswith(str(self.root)):
                subprocess.run(["umount", "-l", target], capture_output=True)
        run(["ip", "link", "del", self.bridge], check=False)
        shutil.rmtree(self.root, ignore_errors=True)
        if errors:
            raise RuntimeError("; ".join(errors))


# -- images ---------------------------------------------------------------------------------

# A throwaway image: dpkg need not fsync every file, nor install docs, man pages and
# translations.  prometheus depends on the JavaScript of its classic web UI
# (libjs-moment-timezone alone is 210 MB of small files); the tests use its HTTP API only.
DPKG_CFG = "force-unsafe-io\n" + "".join(
    f"path-exclude=/usr/share/{d}/*\n" for d in ("doc", "man", "info", "locale", "javascript"))
SUITE = "bookworm"


def cache_dir() -> Path:
    """Where the tests keep what is slow to make and safe to reuse (the base image's tar)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hdpbf"


def base_key(mirror: str) -> str:
    """A digest of every input of the base image: another suite, mirror, package list or
    dpkg setting is another file."""
    inputs = json.dumps([SUITE, mirror, sorted(BASE_PACKAGES), DPKG_CFG, "minbase"])
    return hashlib.sha256(inputs.encode()).hexdigest()[:16]


def build_base(dk: PrivateDockerd, debs: Path, cache: Path | None = None) -> str:
    """debootstrap minbase bookworm with BASE_PACKAGES, imported as BASE_TAG; the root
    file system's tar from ``cache`` when a run with the same inputs made it, else made
    and left there.  ``debs``: debootstrap's .deb cache (apt's own archive by default, so a
    second run downloads nothing).  Returns "cached" or "debootstrap"."""
    cache = cache_dir() if cache is None else cache
    mirror = apt_mirror(SUITE)
    tar_path = cache / f"compose-base-{SUITE}-{base_key(mirror)}.tar"
    how = "cached"
    if not tar_path.is_file():
        how = "debootstrap"
        require("debootstrap")
        target = dk.root / "rootfs"
        debs.mkdir(parents=True, exist_ok=True)
        cfg = target / "etc" / "dpkg" / "dpkg.cfg.d"
        cfg.mkdir(parents=True)
        (cfg / "01-test-image").write_text(DPKG_CFG)
        run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
             f"--cache-dir={debs}", SUITE, str(target), mirror], timeout=1200)
        leftover = [p for p in Path("/proc").iterdir() if p.name.isdigit()
                    and _root_of(p).startswith(str(target))]
        for p in leftover:  # a package's postinst may start a daemon in the chroot
            try:
                os.kill(int(p.name), signal.SIGKILL)
            except ProcessLookupError:
                pass
        cache.mkdir(parents=True, exist_ok=True)
        for old in cache.glob(f"compose-base-{SUITE}-*.tar"):
            old.unlink()  # a base of other inputs: never used again
        partial = tar_path.with_suffix(".partial")
        with tarfile.open(partial, mode="w") as tar:
            tar.add(str(target), arcname=".", filter=_skip_cache)
        partial.rename(tar_path)  # whole or absent: an interrupted run leaves no base
        shutil.rmtree(target, ignore_errors=True)
    dk.docker("import", str(tar_path), BASE_TAG, timeout=600)
    return how


def _root_of(proc: Path) -> str:
    try:
        return os.readlink(proc / "root")
    except OSError:
        return ""


def _skip_cache(info: tarfile.TarInfo):
    return None if info.name.startswith("./var/cache/apt/archives/") and info.isfile() else info


def compose_images(compose_file: Path) -> set[str]:
    """Every image a service of the compose file names, except the project's own."""
    doc = yaml.safe_load(compose_file.read_text())
    return {svc["image"] for svc in doc["services"].values()
            if "image" in svc and "build" not in svc and not svc["image"].startswith("hdpbf-mesh")}


def build_standins(dk: PrivateDockerd, compose_file: Path) -> None:
    """A stand-in under every name the compose file and compose/Dockerfile use; the
    stand-ins are built side by side (each is one short step on the base)."""
    wanted = compose_images(compose_file)
    (python_base,) = re.findall(r"^FROM\s+(\S+)", (ROOT / "compose" / "Dockerfile").read_text(), re.M)
    wanted.add(python_base)
    names: dict[str, str] = {}
    for image in sorted(wanted):
        name = image.rsplit(":", 1)[0]
        if name in NOT_RUN:
            names[image] = ""
            continue
        if STANDIN_FOR.get(name) is None:
            raise RuntimeError(f"no stand-in for {image}: add one under {STANDINS}")
        names[image] = STANDIN_FOR[name]

    def build(standin: str) -> None:
        dk.docker("build", "-q", "--build-arg", f"BASE={BASE_TAG}", "-t",
                  f"hdpbf-test/standin-{standin}:latest", str(STANDINS / standin),
                  env_extra={"DOCKER_BUILDKIT": "0"})

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(build, sorted({s for s in names.values() if s})))
    for image, standin in names.items():
        dk.docker("tag", f"hdpbf-test/standin-{standin}:latest" if standin else BASE_TAG, image)


# -- wheels for the project's image --------------------------------------------------------

def container_markers(dk: PrivateDockerd, image: str) -> dict:
    """The environment markers of the python in ``image`` (PEP 508), to pick the
    dependencies it needs (the host's Python may be another patch release)."""
    code = "import json, pip._vendor.packaging.markers as m; print(json.dumps(m.default_environment()))"
    return json.loads(dk.docker("run", "--rm", "--network", "none", image, "python", "-c",
                                code).stdout)


PIP = [sys.executable, "-m", "pip"]


def _pip_env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "PIP_FIND_LINKS"}


def download_wheels(dest: Path) -> None:
    """Wheels for every dependency of pyproject.toml and its build backend, as this host's
    Python resolves them: downloaded, and built here for those PyPI has as sources only."""
    import tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    deps = project["project"]["dependencies"] + project["build-system"]["requires"]
    env = _pip_env()
    dest.mkdir(parents=True, exist_ok=True)
    run([*PIP, "download", "-q", "-d", str(dest), *deps, "wheel"], env=env, timeout=900)
    sdists = [str(p) for p in dest.iterdir() if p.name.endswith((".tar.gz", ".zip"))]
    if sdists:
        run([*PIP, "wheel", "-q", "--no-deps", "-w", str(dest), *sdists], env=env, timeout=900)
        for s in sdists:
            os.unlink(s)


def complete_wheels(dest: Path, markers: dict) -> None:
    """Add what a dependency's marker asks for on the container's Python but not on this
    host's (another patch release: redis wants async-timeout below 3.11.3)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    env = _pip_env()
    missing: set[str] = set()
    for _ in range(10):  # fixpoint: each pass adds what the new wheels need there
        have = {canonicalize_name(p.name.split("-")[0]) for p in dest.glob("*.whl")}
        missing = set()
        for whl in dest.glob("*.whl"):
            for req in _requires(whl):
                r = Requirement(req)
                if canonicalize_name(r.name) in have:
                    continue
                if r.marker is None or r.marker.evaluate(dict(markers, extra="")):
                    missing.add(str(r).split(";")[0])
        if not missing:
            return
        run([*PIP, "download", "-q", "--no-deps", "-d", str(dest), *sorted(missing)], env=env,
            timeout=900)
    raise RuntimeError(f"wheels for the container's Python did not settle: {missing}")


def _requires(whl: Path) -> list[str]:
    import zipfile
    with zipfile.ZipFile(whl) as z:
        (meta,) = [n for n in z.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)]
        text = z.read(meta).decode("utf-8", "replace")
    return [line.split(":", 1)[1].strip() for line in text.splitlines()
            if line.startswith("Requires-Dist:")]


class WheelServer:
    """The wheel directory over HTTP on the private bridge's address, for the build."""

    def __init__(self, directory: Path, host: str) -> None:
        handler = functools.partial(_QuietHandler, directory=str(directory))
        self.httpd = http.server.ThreadingHTTPServer((host, 0), handler)
        self.url = f"http://{host}:{self.httpd.server_address[1]}/"
        self.host = host
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def env(self) -> dict[str, str]:
        """compose/.env lines for compose/Dockerfile's PIP_* build arguments."""
        return {"PIP_FIND_LINKS": self.url, "PIP_NO_INDEX": "1", "PIP_TRUSTED_HOST": self.host}

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass
