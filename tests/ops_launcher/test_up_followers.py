"""``hdpbf up --followers 2``: followers start beside the mesh, ``hdpbf status`` shows
them with their lag, they install what the validators commit, ``hdpbf down`` stops them.
"""
from __future__ import annotations

import pytest

from pbft_tasks.topology import MeshConfig
from tests.meshkit import wait_until
from tests.services import wait_not_quiet

from .launchkit import Launch, commit_updates, hdpbf, shared_launch

pytestmark = [pytest.mark.broker, pytest.mark.slow]


class FollowerLaunch(Launch):
    def up(self):
        return hdpbf("up", "--data-dir", str(self.data_dir), "--broker", self.broker,
                     "--backend", self.backend, "--flower-port", str(self.flower_port),
                     "--api-port", str(self.api_port), "--metrics-port-base",
                     str(self.metrics_base), "--computes", "", "--followers", "2",
                     "--timeout", "90")


@pytest.fixture(scope="module")
def launched(tmp_path_factory, vhosts):
    wait_not_quiet()
    with shared_launch(tmp_path_factory, vhosts, FollowerLaunch) as launch:
        yield launch


def test_up_lists_and_starts_followers_and_status_shows_their_lag(launched):
    cfg = MeshConfig.load(launched.data_dir / "mesh.json")
    assert [f.name for f in cfg.followers] == ["f1", "f2"]
    names = {p["name"] for p in launched.run()["processes"]}
    assert {"follower-f1", "follower-f2"} <= names
    commit_updates(launched, 50)

    def caught_up():
        code, report = launched.status()
        fs = report["followers"]
        top = report["max_height"]
        return code == 0 and top and all(f["height"] == top and f["lag"] == 0 and f["healthy"]
                                          for f in fs) and report
    report = wait_until(caught_up, 60, "both followers healthy at the validators' height")
    assert len(report["followers"]) == 2
    res = hdpbf("status", "--data-dir", str(launched.data_dir))
    assert "followers" in res.stdout and "f1" in res.stdout and "f2" in res.stdout
