"""``hdpbf up`` and ``hdpbf compute`` sign each compute host's console records with a
client that speaks for that host (ledger/state.py's rule), and say so when none does."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from mesh.cli import main
from mesh.clikit import BadInput
from mesh.ops.stack import _open_mesh
from pbft_tasks.topology import console_writers, init_mesh


def test_a_new_stack_mesh_has_a_client_per_compute_host(tmp_path):
    cfg, new = _open_mesh(str(tmp_path), None, None, None, ["cmp1", "cmp2"])
    assert new and console_writers(cfg) == {"admin": ("admin",), "cmp1": ("cmp1",),
                                            "cmp2": ("cmp2",)}


def test_an_existing_mesh_without_a_client_for_a_host_is_refused(tmp_path):
    init_mesh(tmp_path, readers=("api",))
    with pytest.raises(BadInput, match=r"no client that speaks for compute host\(s\) \['cmp1'\]"):
        _open_mesh(str(tmp_path), None, None, None, ["cmp1"])


def test_compute_refuses_a_client_that_does_not_speak_for_its_host(tmp_path):
    init_mesh(tmp_path, clients=("admin", "cmp1"), readers=("api",))
    res = CliRunner().invoke(main, ["compute", "--host", "cmp2", "--client", "cmp1",
                                    "--config", str(tmp_path / "mesh.json")])
    assert res.exit_code != 0 and "does not speak for host 'cmp2'" in res.output
