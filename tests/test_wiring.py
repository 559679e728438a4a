"""The composition root (pbft_tasks/wiring.py): one way to build a node, for the Celery
worker, the embedded mesh and tests alike."""
import pytest

from mesh.embedded import EmbeddedMesh
from pbft_tasks.topology import LEDGER_FILE, ConfigError, init_mesh, node_key_path
from pbft_tasks.transport import LocalTransport
from pbft_tasks.wiring import build_node


@pytest.fixture
def cfg(tmp_path):
    return init_mesh(tmp_path / "m", nodes=4)


def test_build_node_opens_the_nodes_ledger_and_signs_as_the_node(cfg):
    rt = build_node(cfg, 2, LocalTransport())
    try:
        assert rt.id == 2 and rt.signer.identity == 2
        assert rt.ledger.path == str(cfg.ledger_path(2))
        assert cfg.ledger_path(2) == cfg.node_data_dir(2) / LEDGER_FILE
        assert cfg.ledger_path(2).exists()
        assert rt.replica.cfg == cfg.replica_config()
    finally:
        rt.ledger.close()


def test_build_node_refuses_another_nodes_key(cfg):
    with pytest.raises(ConfigError, match="node 1"):
        build_node(cfg, 0, LocalTransport(), key_file=node_key_path(cfg.base_dir, 1))
    assert not cfg.ledger_path(0).exists()  # refused before any ledger is created


def test_a_data_dir_other_than_the_meshs(cfg, tmp_path):
    rt = build_node(cfg, 1, LocalTransport(), data_dir=tmp_path / "twin")
    try:
        assert rt.ledger.path == str(tmp_path / "twin" / LEDGER_FILE)
    finally:
        rt.ledger.close()


def test_the_embedded_mesh_builds_its_nodes_the_same_way(cfg):
    with EmbeddedMesh(str(cfg.path)) as mesh:
        assert [rt.ledger.path for rt in mesh.nodes] == [str(cfg.ledger_path(i)) for i in range(4)]
        # one verifier pool per process; each node's client keys follow its own ledger
        assert len({id(rt.verifier._pool) for rt in mesh.nodes}) == 1
        assert [rt.verifier.membership.ledger for rt in mesh.nodes] == [rt.ledger for rt in mesh.nodes]
