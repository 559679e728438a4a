#!/bin/sh
# What the official RabbitMQ image's entrypoint does with the variables the compose file
# sets: the default user and password, the Erlang cookie shared by a cluster's nodes, and
# every listener on all interfaces.  Node name rabbit@<hostname>, data in /var/lib/rabbitmq.
set -eu
conf=/etc/rabbitmq/conf.d/10-defaults.conf
{
  echo "loopback_users = none"
  echo "listeners.tcp.default = 5672"
  [ -z "${RABBITMQ_DEFAULT_USER:-}" ] || echo "default_user = $RABBITMQ_DEFAULT_USER"
  [ -z "${RABBITMQ_DEFAULT_PASS:-}" ] || echo "default_pass = $RABBITMQ_DEFAULT_PASS"
} > "$conf"
# rabbitmq.conf includes conf.d/ only when it exists (RabbitMQ 3.10)
[ -e /etc/rabbitmq/rabbitmq.conf ] || : > /etc/rabbitmq/rabbitmq.conf
# files mounted into conf.d are read-only: only readable is needed
chown -R rabbitmq:rabbitmq /var/lib/rabbitmq
chown rabbitmq:rabbitmq "$conf" /etc/rabbitmq/rabbitmq.conf
if [ -n "${RABBITMQ_ERLANG_COOKIE:-}" ]; then
  cookie=/var/lib/rabbitmq/.erlang.cookie
  printf '%s' "$RABBITMQ_ERLANG_COOKIE" > "$cookie"
  chown rabbitmq:rabbitmq "$cookie"; chmod 600 "$cookie"
  unset RABBITMQ_ERLANG_COOKIE
fi
# Debian's /usr/sbin/rabbitmq-server runs the server under `su` and waits: as PID 1 that
# shell ignores SIGTERM, and `docker stop` would wait 10 s for SIGKILL.  The official image
# execs the server, whose script stops RabbitMQ on SIGTERM; so does this.
if [ "$1" = rabbitmq-server ]; then
  shift
  cd /var/lib/rabbitmq
  exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups \
    env HOME=/var/lib/rabbitmq /usr/lib/rabbitmq/bin/rabbitmq-server "$@"
fi
exec "$@"
