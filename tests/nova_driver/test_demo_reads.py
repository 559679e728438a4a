"""``hdpbf demo`` (embedded, no broker) ends with console reads through the hdpbf driver:
step 2 first, step 1 after the commit on two API hosts with the same token, and step 2
again after a terminate."""
from __future__ import annotations

import json

from click.testing import CliRunner

from mesh.cli import main


def test_the_demo_reads_consoles_through_the_driver():
    res = CliRunner().invoke(main, ["demo", "--requests", "50", "--json"])
    assert res.exit_code == 0, res.output
    reads = json.loads(res.stdout)["console_reads"]
    steps = [c["step"] for c in reads["calls"]]
    apis = [c["api"] for c in reads["calls"]]
    tokens = [c["token"] for c in reads["calls"]]
    assert apis == ["api0", "api0", "api0", "api1", "api1"]
    assert steps[0] == "step2" and steps[1] in ("step1_own", "step1")
    assert steps[2:] == ["step1", "step1", "step2"]
    assert len(set(tokens[:4])) == 1 and tokens[4] != tokens[0]
    assert reads["compute_served"] == 2 and reads["recorded"] == 2
