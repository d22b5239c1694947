"""``python -m detect``: the commands listed in pipeline order, and each run through it exactly as
``python -m detect.COMMAND`` runs."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from detect.__main__ import COMMANDS, main

REPO = Path(__file__).resolve().parents[1]


def test_the_list_names_every_command_module_once_in_pipeline_order() -> None:
    out = subprocess.run([sys.executable, "-m", "detect"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    names = [n for n, _ in COMMANDS]
    modules = sorted(p.stem for p in (REPO / "detect").glob("*.py") if not p.stem.startswith("_"))
    assert sorted(names) == modules  # a new command module shows up here or this fails
    listed = [line.split()[0] for line in out.stdout.splitlines() if line.startswith("  ")]
    assert listed == names
    assert names.index("check_xml") < names.index("train") < names.index("eval") < names.index("export")
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["detect"] == "detect.__main__:main" and scripts["detect-predict"] == "detect.predict:main"


def test_a_command_runs_through_the_front_door_as_it_runs_alone(devkit, capsys) -> None:
    from detect.check_xml import main as check_xml

    def out() -> str:  # without the run's duration
        return re.sub(r" in \d+\.\d s", "", capsys.readouterr().out)

    alone = check_xml([str(devkit)])
    said = out()
    assert "8 XML files" in said
    assert main(["check_xml", str(devkit)]) == alone
    assert out() == said
    assert main(["check-xml", str(devkit)]) == alone  # the console script's spelling too
    assert out() == said


def test_a_usage_error_in_the_command_keeps_its_exit_status(tmp_path, capsys) -> None:
    assert main(["eval", "--predictions", str(tmp_path / "p.json")]) == 2
    assert "--predictions needs --data" in capsys.readouterr().err


def test_an_unknown_command_is_one_line_and_exit_2(capsys) -> None:
    assert main(["trian", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no command 'trian'" in err and "did you mean train?" in err
    assert main(["\x1b[2Jx"]) == 2
    assert "\x1b" not in capsys.readouterr().err  # a terminal escape in the name is shown, not run
