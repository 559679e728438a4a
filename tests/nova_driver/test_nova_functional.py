"""nova's own functional fixtures (in-process nova-api, conductor, scheduler, placement,
nova-compute on the fake virt driver), unmodified, with ``transport_url =
hdpbf+fake:/`` and an in-process mesh.  The cases are
nova_cases/functional_case.py, run by unittest in a process of their own:
``POST /servers/{id}/remote-consoles`` twice, the second from step 1 with the same
token, which validates against nova's ConsoleAuthToken table; after ``DELETE
/servers/{id}`` and after a live migration the entry is deleted on every node."""
from __future__ import annotations

from .subproc import run_case


def test_novas_functional_fixtures_through_the_hdpbf_driver():
    out = run_case("functional_case.py", timeout=400, unittest=True)
    assert "Ran 2 tests" in out, out[-4000:]
