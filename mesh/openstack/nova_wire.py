"""nova's compute RPC as it is on the wire, and the ledger value of a recorded reply.

Owns: reading what the ``hdpbf`` driver needs out of nova's messages (the instance uuid
inside a NovaObject primitive, the console type), the ledger key of a policy call, and
sealing / opening a recorded RPC reply.  No I/O, no oslo import: plain dicts in and out.

Rules of this file:
- nova sends ``instance`` as a NovaObject primitive: ``{"nova_object.name": "Instance",
  "nova_object.namespace": "nova", "nova_object.version": "2.x", "nova_object.data":
  {"uuid": ..., "host": ..., ...}, "nova_object.changes": [...]}``.  Any object version
  is accepted; only ``nova_object.data.uuid`` is read.  Anything else (a bare string, a
  primitive without a uuid) is ``None``: the caller falls back to step 2 and counts it.
- The key is ``rpc/<topic>/<method>/<uuid>/<console type>``: a serial console and a VNC
  console of one instance are different answers.
- A reply is stored with its bearer token sealed (sealing.py's rules): the reply's JSON
  text is split around the token (``json.dumps(reply).split(token)``), so the token is
  gone from every field that carried it (nova's ``token`` and ``access_url``) and the
  opened reply is the very JSON compute sent, byte for byte once re-joined.
- Only a dict reply with a string ``token`` of at least 16 characters is recordable (all
  four nova console methods return one); anything else is not recorded.
"""
from __future__ import annotations

import hashlib
import json
import uuid as uuidlib
from typing import Any, Mapping

from .sealing import Opener, Sealer, SealError

FORMAT = "rpc-reply/1"
CONSOLE_METHODS = ("get_vnc_console", "get_spice_console", "get_serial_console",
                   "get_mks_console")
# Every console type nova 34 serves per method: an instance's invalidation deletes them all.
CONSOLE_TYPES = {"get_vnc_console": ("novnc",),
                 "get_spice_console": ("spice-html5", "spice-direct"),
                 "get_serial_console": ("serial",),
                 "get_mks_console": ("webmks",)}
DELETE_EVENTS = ("instance.delete.end", "instance.live_migration_post.end")
LEGACY_DELETE_EVENTS = ("compute.instance.delete.end", "compute.instance.live_migration._post.end")
# Compute methods after which nova has deleted the instance's console tokens.
INVALIDATING_METHODS = ("terminate_instance", "post_live_migration_at_destination")
MIN_TOKEN = 16


def instance_uuid(instance: Any) -> str | None:
    """The uuid in a NovaObject primitive of an instance, or None."""
    if not isinstance(instance, dict):
        return None
    data = instance.get("nova_object.data")
    if not isinstance(data, dict):
        return None
    uuid = data.get("uuid")
    return uuid if type(uuid) is str and uuid else None


def payload_uuid(payload: Any) -> str | None:
    """The instance uuid of a versioned notification's payload (``InstanceActionPayload``
    and friends keep it in ``nova_object.data.uuid``), or None."""
    return instance_uuid(payload)


def reply_key(topic: str, method: str, uuid: str, console_type: str) -> str:
    return f"rpc/{topic}/{method}/{uuid}/{console_type}"


def instance_keys(topic: str, methods: tuple[str, ...], uuid: str) -> list[str]:
    """Every key the policy can hold for one instance (what an invalidation deletes)."""
    return [reply_key(topic, m, uuid, t) for m in methods for t in CONSOLE_TYPES.get(m, ())]


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def reply_token(reply: Any) -> str | None:
    if not isinstance(reply, dict):
        return None
    token = reply.get("token")
    return token if type(token) is str and len(token) >= MIN_TOKEN else None


def seal_reply(reply: Mapping, *, method: str, uuid: str, console_type: str,
               compute_host: str, sealer: Sealer | None) -> dict:
    """The ledger value for ``reply`` (ValueError if it carries no token to seal)."""
    token = reply_token(reply)
    if token is None:
        raise ValueError("a console reply without a token cannot be recorded")
    value: dict[str, Any] = {
        "format": FORMAT, "method": method, "instance": uuid, "console_type": console_type,
        "compute_host": compute_host,
        "pieces": json.dumps(reply, sort_keys=True).split(token),
        "token_sha256": _sha256(token)}
    if sealer is None:
        value["token"] = token
    else:
        value["sealed"] = sealer.seal(token)
    return value


def open_reply(value: Any, opener: Opener | None) -> dict:
    """The reply compute sent, from a ledger value; SealError if this reader cannot open
    it or it is not a recorded reply."""
    if type(value) is not dict or value.get("format") != FORMAT:
        raise SealError("not a recorded RPC reply")
    pieces = value.get("pieces")
    if type(pieces) is not list or len(pieces) < 2 or not all(type(p) is str for p in pieces):
        raise SealError("a recorded reply without its pieces")
    if "token" in value:
        token = value["token"]
        if type(token) is not str or _sha256(token) != value.get("token_sha256"):
            raise SealError("the clear token does not match its hash")
    elif opener is None:
        raise SealError("this console token is sealed and this reader has no key")
    else:
        token = opener.open(value.get("sealed"), value.get("token_sha256"))
    try:
        reply = json.loads(token.join(pieces))
    except (ValueError, RecursionError) as exc:
        raise SealError(f"the recorded reply is not JSON once opened: {exc!r}"[:300]) from None
    if type(reply) is not dict:
        raise SealError("the recorded reply is not a JSON object")
    return reply


# -- what nova puts on the wire (for the stand-ins and the tests) --------------------------
def instance_primitive(uuid: str, host: str | None = None, version: str = "2.8",
                       **fields: Any) -> dict:
    """A NovaObject primitive of an ``Instance`` as nova's serializer sends it."""
    data = {"uuid": uuid, "host": host, **fields}
    return {"nova_object.name": "Instance", "nova_object.namespace": "nova",
            "nova_object.version": version, "nova_object.data": data,
            "nova_object.changes": sorted(data)}


def request_context(user_id: str = "hdpbf", project_id: str = "hdpbf",
                    is_admin: bool = True, request_id: str | None = None) -> dict:
    """A serialized nova ``RequestContext`` (the keys nova's context ``to_dict`` has that
    a compute server reads); oslo sends each as a ``_context_<key>`` field."""
    return {"user_id": user_id, "project_id": project_id, "user": user_id,
            "project": project_id, "tenant": project_id, "is_admin": is_admin,
            "read_only": False, "show_deleted": False, "auth_token": None,
            "request_id": request_id or f"req-{uuidlib.uuid4()}",
            "global_request_id": None, "roles": ["admin"] if is_admin else ["member"],
            "domain": None, "user_domain": None, "project_domain": None,
            "is_admin_project": True, "resource_uuid": None, "system_scope": None,
            "remote_address": None, "timestamp": None, "quota_class": None,
            "user_name": user_id, "project_name": project_id, "service_catalog": [],
            "instance_lock_checked": False, "read_deleted": "no", "db_connection": None,
            "mq_connection": None, "cell_uuid": None}
