"""The README's test command is what CI runs, character for character."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_test_command() -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"Run the tests:\s*```sh\n(.+?)\n```", text, re.S)
    assert m, "README.md has no 'Run the tests:' block"
    (line,) = m.group(1).strip().splitlines()
    return line


def test_ci_runs_the_readme_test_command():
    lines = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    assert lines[-1] == readme_test_command()


def test_the_command_bootstraps_then_installs_then_tests():
    cmd = readme_test_command()
    assert cmd.startswith("bash tests/bootstrap.sh && ") and cmd.endswith(".venv/bin/pytest")
    assert (ROOT / "tests" / "bootstrap.sh").is_file()
