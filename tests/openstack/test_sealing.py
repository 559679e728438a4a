"""Sealing of console tokens: round trip, readers without the key, nothing in clear."""
from __future__ import annotations

import pytest
from nacl.public import PrivateKey

from mesh.openstack import Opener, Sealer, SealError, instance_key, open_console, seal_console
from mesh.openstack.sealing import NOVA_KEYS
from pbft_tasks.topology import (ConfigError, MeshConfig, add_readers, init_mesh, load_reader_identity,
                           reader_keys)

INFO = {"host": "cmp1", "port": 5901, "internal_access_path": None, "token": "tok-SECRET-123",
        "access_url": "http://h:6080/vnc_auto.html?path=%3Ftoken%3Dtok-SECRET-123"}


def _keys(*names):
    return {n: PrivateKey.generate() for n in names}


def test_instance_key_is_console_instance_type():
    assert instance_key("i1") == "console/i1/novnc"
    assert instance_key("i1", "spice") == "console/i1/spice"


def test_sealed_value_round_trips_for_every_reader_and_holds_no_clear_token():
    keys = _keys("api0", "api1")
    value = seal_console("i1", "novnc", "cmp1", INFO, Sealer({n: k.public_key for n, k in keys.items()}))
    assert "tok-SECRET-123" not in repr(value)
    assert set(value["sealed"]) == {"api0", "api1"}
    for name, key in keys.items():
        assert open_console(value, Opener(name, key)) == INFO


def test_a_reader_without_a_ciphertext_or_with_the_wrong_key_cannot_open():
    keys = _keys("api0", "api1")
    value = seal_console("i1", "novnc", "cmp1", INFO, Sealer({"api0": keys["api0"].public_key}))
    with pytest.raises(SealError, match="not sealed for reader 'api1'"):
        open_console(value, Opener("api1", keys["api1"]))
    with pytest.raises(SealError, match="cannot open"):
        open_console(value, Opener("api0", keys["api1"]))  # right name, wrong key
    with pytest.raises(SealError, match="no key"):
        open_console(value, None)


def test_a_tampered_hash_is_refused():
    k = PrivateKey.generate()
    value = seal_console("i1", "novnc", "cmp1", INFO, Sealer({"api": k.public_key}))
    value["token_sha256"] = "0" * 64
    with pytest.raises(SealError, match="hash"):
        open_console(value, Opener("api", k))


def test_unsealed_values_are_readable_by_anyone():
    value = seal_console("i1", "novnc", "cmp1", INFO, None)
    assert open_console(value, None) == INFO
    assert set(open_console(value, None)) == set(NOVA_KEYS)


def test_a_sealer_needs_readers():
    with pytest.raises(ValueError, match="add-reader"):
        Sealer({})


# -- reader keys in mesh.json -------------------------------------------------------------

def test_init_mesh_creates_reader_keys_mode_0600(tmp_path):
    cfg = init_mesh(tmp_path, readers=("api0", "api1"))
    assert [r.name for r in MeshConfig.load(tmp_path).readers] == ["api0", "api1"]
    for name in ("api0", "api1"):
        path = tmp_path / "keys" / f"reader-{name}.key"
        assert path.stat().st_mode & 0o777 == 0o600
        key = load_reader_identity(cfg, name)
        assert bytes(key.public_key) == bytes(reader_keys(cfg)[name])


def test_mesh_json_without_readers_still_loads_and_readers_can_be_added(tmp_path):
    init_mesh(tmp_path)
    text = (tmp_path / "mesh.json").read_text()
    assert "readers" not in text  # what older versions wrote
    assert MeshConfig.load(tmp_path).readers == []
    cfg = add_readers(tmp_path, ["api"])
    assert [r.name for r in MeshConfig.load(tmp_path).readers] == ["api"]
    assert load_reader_identity(cfg, "api")
    with pytest.raises(ConfigError, match="reader 'nope' is not in the mesh"):
        load_reader_identity(cfg, "nope")


def test_another_readers_key_file_is_refused(tmp_path):
    cfg = init_mesh(tmp_path, readers=("api0", "api1"))
    with pytest.raises(ConfigError, match="reader 'api1'"):
        load_reader_identity(cfg, "api0", key_path=tmp_path / "keys" / "reader-api1.key")


def test_force_reinit_removes_old_reader_keys(tmp_path):
    init_mesh(tmp_path, readers=("old",))
    init_mesh(tmp_path, readers=("new",), force=True)
    assert sorted(p.name for p in (tmp_path / "keys").glob("reader-*")) == ["reader-new.key"]
