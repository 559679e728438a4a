"""The command line: the demo's JSON, reads from a local ledger, and bad input."""
import json

from click.testing import CliRunner

from mesh.cli import main


def test_demo_embedded_json_reports_identical_ledgers(tmp_path):
    result = CliRunner().invoke(main, ["demo", "--requests", "300", "--json",
                                       "--data-dir", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert [n["id"] for n in out["nodes"]] == [0, 1, 2, 3]
    assert len({(n["height"], n["head"]) for n in out["nodes"]}) == 1
    assert out["nodes"][0]["height"] >= 1 and out["identical"] is True
    assert out["mode"] == "embedded" and out["tx_per_s"] > 0


def test_get_reads_a_committed_value_from_each_local_ledger(tmp_path):
    runner = CliRunner()
    data = tmp_path / "m"
    assert runner.invoke(main, ["demo", "--requests", "20", "--data-dir", str(data)]).exit_code == 0
    for node in range(4):
        res = runner.invoke(main, ["get", "demo7", "--node", str(node), "--json",
                                   "--config", str(data / "mesh.json")])
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["value"] == 7


def test_get_missing_key_exits_1(tmp_path):
    runner = CliRunner()
    data = tmp_path / "m"
    runner.invoke(main, ["demo", "--requests", "5", "--data-dir", str(data)])
    res = runner.invoke(main, ["get", "nope", "--config", str(data / "mesh.json")])
    assert res.exit_code == 1 and "not found" in res.output


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["get", "k", "--config", str(tmp_path / "absent.json")])
    assert res.exit_code == 2 and "hdpbf init" in res.output and "Traceback" not in res.output
    data = tmp_path / "m"
    runner.invoke(main, ["init", "--nodes", "4", "--dir", str(data)])
    res = runner.invoke(main, ["get", "k", "--node", "9", "--config", str(data / "mesh.json")])
    assert res.exit_code == 2 and "9" in res.output
    res = runner.invoke(main, ["put", "k", "v", "--ttl", "-1", "--config", str(data / "mesh.json")])
    assert res.exit_code == 2 and "ttl" in res.output
    res = runner.invoke(main, ["demo", "--nodes", "3"])
    assert res.exit_code == 2


def test_init_reader_is_an_option_of_init(tmp_path):
    """``--reader`` is declared on ``init`` itself: the mesh gets the reader's X25519 key
    file; a bad or duplicated name is one line and exit 2, and writes no mesh."""
    from pbft_tasks.topology import MeshConfig, load_reader_identity
    assert "readers" in [p.name for p in main.commands["init"].params]
    runner = CliRunner()
    res = runner.invoke(main, ["init", "--dir", str(tmp_path / "m"), "--reader", "api"])
    assert res.exit_code == 0, res.output
    assert "reader api:" in res.output
    cfg = MeshConfig.load(tmp_path / "m" / "mesh.json")
    assert [r.name for r in cfg.readers] == ["api"]
    assert load_reader_identity(cfg, "api") is not None
    for args, message in ((["--reader", "a b"], "reader name"),
                          (["--reader", "api", "--reader", "api"], "duplicate reader name")):
        res = runner.invoke(main, ["init", "--dir", str(tmp_path / "bad"), *args])
        assert res.exit_code == 2 and message in res.output, res.output
        assert not (tmp_path / "bad").exists()
