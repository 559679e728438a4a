"""What nova-api holds when it calls ``get_vnc_console``: the bench's Instance and context.

Owns: building, for ``hdpbf bench paper``'s nova configurations, the ``Instance`` and
``RequestContext`` nova 34's API passes to ``ComputeAPI.get_vnc_console``, so that the
client-side cost (nova's serializer turning both into primitives) is the real one.

Where it comes from (nova 34):
- ``api/openstack/compute/remote_consoles.py`` -> ``common.get_instance(compute_api,
  context, id)`` -> ``compute.api.API.get``, which adds ``expected_attrs`` =
  ``metadata``, ``system_metadata``, ``security_groups``, ``info_cache``
  (``objects.instance.INSTANCE_DEFAULT_FIELDS``) -> ``Instance.get_by_uuid`` ->
  ``Instance._from_db_object``: every column of the ``instances`` row that is not an
  optional attribute, plus those four.  We call that same ``_from_db_object`` on a row
  shaped like a booted instance's (one port in the network info cache, the image
  properties nova copies into system metadata), so the object carries exactly the fields
  nova-api's would.
- The context is keystonemiddleware's: user and project names and ids, roles, a Fernet
  token, and the service catalog entries ``RequestContext`` keeps (image, block-storage,
  volumev3, placement, network).

Values are made up; their shapes and sizes follow a devstack of nova 34.
"""
from __future__ import annotations

import datetime
import json
import uuid as uuidlib
from typing import Any

NETWORK_ID = "7b0a2c5e-3f3e-4a8b-9c51-1d6f0e2a9b44"
PROJECT_ID = "5f1c8e0b2a3d4c6e9f7a1b2c3d4e5f60"
USER_ID = "0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d"
FERNET_TOKEN = ("gAAAAABnXq" + "x7Kp2Lw9QvR3sT8uY1zA4bC6dE0fG5hJ" * 5)[:183]


def _vif(instance_uuid: str) -> dict:
    port = str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, instance_uuid))
    return {
        "id": port, "address": "fa:16:3e:4c:2d:91", "type": "ovs",
        "devname": f"tap{port[:11]}", "ovs_interfaceid": port, "qbh_params": None,
        "qbg_params": None, "active": True, "vnic_type": "normal", "profile": {},
        "preserve_on_delete": False, "delegate_create": True, "meta": {},
        "details": {"connectivity": "l2", "port_filter": True, "ovs_hybrid_plug": False,
                    "datapath_type": "system", "bridge_name": "br-int"},
        "network": {
            "id": NETWORK_ID, "bridge": "br-int", "label": "private",
            "meta": {"injected": False, "tenant_id": PROJECT_ID, "mtu": 1442,
                     "physical_network": None, "tunneled": True},
            "subnets": [{
                "cidr": "10.0.0.0/26", "version": 4, "routes": [], "dns": [],
                "meta": {"enable_dhcp": True, "dhcp_server": "10.0.0.2"},
                "gateway": {"address": "10.0.0.1", "type": "gateway", "version": 4,
                            "meta": {}},
                "ips": [{"address": "10.0.0.12", "type": "fixed", "version": 4, "meta": {},
                         "floating_ips": []}],
            }],
        },
    }


def _system_metadata() -> dict[str, str]:
    return {"image_base_image_ref": "3c1f2a9e-7d6b-4e5f-8a9b-0c1d2e3f4a5b",
            "image_container_format": "bare", "image_disk_format": "qcow2",
            "image_min_disk": "20", "image_min_ram": "0",
            "image_hw_rng_model": "virtio", "image_owner_specified.openstack.md5": "",
            "image_owner_specified.openstack.object": "images/cirros-0.6.2-x86_64-disk",
            "image_owner_specified.openstack.sha256": "",
            "boot_roles": "member,reader,manager", "owner_project_name": "demo",
            "owner_user_name": "demo"}


def db_row(instance_uuid: str, host: str, fields: dict) -> dict:
    """An ``instances`` row (with the joined columns nova-api loads) of a booted instance
    on ``host``; ``fields`` is ``objects.Instance.fields``."""
    created = datetime.datetime(2026, 11, 30, 9, 12, 4, tzinfo=datetime.timezone.utc)
    row: dict[str, Any] = {name: (False if not field.nullable else None)
                           for name, field in fields.items()}
    row.update(
        id=4711, uuid=instance_uuid, user_id=USER_ID, project_id=PROJECT_ID,
        image_ref="3c1f2a9e-7d6b-4e5f-8a9b-0c1d2e3f4a5b", kernel_id="", ramdisk_id="",
        hostname="vm-" + instance_uuid[:8], display_name="vm-" + instance_uuid[:8],
        display_description="vm-" + instance_uuid[:8], launch_index=0, key_name="mykey",
        key_data="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHb8n0YqKxSv3uUq demo@ctl",
        power_state=1, vm_state="active", task_state=None, memory_mb=2048, vcpus=1,
        root_gb=20, ephemeral_gb=0, host=host, node=host, compute_id=1,
        instance_type_id=2, user_data=None, reservation_id="r-3kq8x1z0",
        launched_at=created + datetime.timedelta(seconds=14), availability_zone="nova",
        launched_on=host, locked=False, locked_by=None, os_type=None, architecture=None,
        vm_mode=None, root_device_name="/dev/vda", config_drive="", progress=0,
        auto_disk_config=False, shutdown_terminate=False, disable_terminate=False,
        cleaned=0, hidden=False, created_at=created,
        updated_at=created + datetime.timedelta(seconds=15), deleted_at=None, deleted=0,
        metadata={}, system_metadata=_system_metadata(), security_groups=[],
        info_cache={"instance_uuid": instance_uuid, "network_info": json.dumps([_vif(instance_uuid)]),
                    "created_at": created, "updated_at": created, "deleted_at": None,
                    "deleted": False})
    return row


def api_instance(objects: Any, ctxt: Any, instance_uuid: str, host: str) -> Any:
    """The ``Instance`` nova-api passes to ``ComputeAPI.get_vnc_console``."""
    from nova.objects.instance import INSTANCE_DEFAULT_FIELDS
    return objects.Instance._from_db_object(
        ctxt, objects.Instance(), db_row(instance_uuid, host, objects.Instance.fields),
        expected_attrs=list(INSTANCE_DEFAULT_FIELDS))


def _catalog_entry(kind: str, name: str, path: str) -> dict:
    return {"type": kind, "name": name, "id": uuidlib.uuid5(uuidlib.NAMESPACE_DNS, kind).hex,
            "endpoints": [{"id": uuidlib.uuid5(uuidlib.NAMESPACE_DNS, kind + i).hex,
                           "interface": i, "region": "RegionOne", "region_id": "RegionOne",
                           "url": f"http://192.0.2.1/{path}"} for i in ("public", "internal")]}


def api_context(context_module: Any) -> Any:
    """The ``RequestContext`` keystonemiddleware gives nova-api for a member's request."""
    catalog = [_catalog_entry(*e) for e in (
        ("image", "glance", "image"), ("block-storage", "cinder", "volume/v3"),
        ("volumev3", "cinderv3", "volume/v3"), ("placement", "placement", "placement"),
        ("network", "neutron", "networking"), ("identity", "keystone", "identity"))]
    return context_module.RequestContext(
        user_id=USER_ID, project_id=PROJECT_ID, user_name="demo", project_name="demo",
        user_domain_id="default", project_domain_id="default", roles=["member", "reader"],
        auth_token=FERNET_TOKEN, service_catalog=catalog, remote_address="192.0.2.10",
        is_admin=False, request_id="req-" + str(uuidlib.uuid4()))
