"""docs/PROTOCOL.md section 13 stays equal to the code: the refusal reasons, the boundary
formula and the config op's key."""
from __future__ import annotations

import re
from pathlib import Path

from pbft_tasks.core import config as C
from pbft_tasks.core.messages import CONFIG_KEY

DOC = Path(__file__).resolve().parents[1] / "docs" / "PROTOCOL.md"


def section() -> str:
    text = DOC.read_text(encoding="utf-8")
    return text[text.index("## 13. Membership"):]


def test_the_refusal_table_names_exactly_the_codes_reasons():
    m = re.search(r"<!--\s*config-refusals\s*-->[ \t]*\n((?:\|.*\|[ \t]*\n?)+)", section())
    rows = m.group(1).strip().splitlines()[2:]
    documented = [re.search(r"`([^`]*)`", r).group(1) for r in rows]
    assert sorted(documented) == sorted(set(C.REFUSALS) | {"config_no_genesis"})


def test_the_boundary_formula_is_the_codes():
    assert "effective = ((s + L) // k + 1) * k + 1" in section()
    for s in range(1, 300):
        for k, L in ((4, 8), (64, 256), (10, 30)):
            assert C.effective_from(s, k, L) == ((s + L) // k + 1) * k + 1
            assert C.effective_from(s, k, L) - 1 > s + L and (C.effective_from(s, k, L) - 1) % k == 0


def test_the_documented_key_and_signed_bytes_are_the_codes():
    assert f'"key": "{CONFIG_KEY}"' in DOC.read_text(encoding="utf-8")
    change = {"version": 3, "base": "ab" * 32, "ops": [{"op": "remove_follower", "name": "f"}],
              "sigs": {"alice": "00"}}
    assert C.change_bytes(change) == (b'{"base":"' + b"ab" * 32 + b'","ops":[{"name":"f","op":'
                                      b'"remove_follower"}],"type":"ConfigChange","version":3}')
