"""The one entrance and tail every command's ``main`` goes through (:func:`detect.common.options.run_command`):
parse, then every way a command can end is one line and an exit status, never a traceback."""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import pytest

from detect.common.errors import DetectError, UsageError
from detect.common.options import CliParser, run_command

REPO = Path(__file__).resolve().parents[1]


def parser() -> CliParser:
    p = CliParser(prog="python -m detect.x")
    p.add_argument("--n", type=int, default=1)
    p.add_argument("-v", "--verbose", action="store_true")
    return p


@pytest.mark.parametrize("raised, code, said", [
    (UsageError("--data d: no such folder"), 2, "error: --data d: no such folder\n"),
    (DetectError("a.xml:3: no <object>"), 1, "error: a.xml:3: no <object>\n"),
    (OSError(errno.ENOSPC, "No space left on device", "out/summary.json"), 1,
     "error: out/summary.json: No space left on device\n"),
    (KeyboardInterrupt(), 130, "interrupted; nothing was written\n"),
])
def test_each_ending_is_one_line_and_its_status(raised, code, said, capsys) -> None:
    def body(args) -> int:
        assert args.n == 3
        raise raised

    assert run_command(body, parser(), ["--n", "3"], interrupted="interrupted; nothing was written") == code
    assert capsys.readouterr().err == said


def test_a_body_without_a_parser_and_a_usage_error_in_parsing(capsys) -> None:
    assert run_command(lambda: 0) == 0
    with pytest.raises(SystemExit) as exc:
        run_command(lambda args: 0, parser(), ["--n", "x"])
    assert exc.value.code == 2 and capsys.readouterr().err.count("\n") == 1


def test_a_reader_that_stops_early_ends_the_command_quietly() -> None:
    # detect.eval prints its table to a pipe that `head -1` closes after one line
    code = ("import sys\nfrom detect.common.options import run_command\n"
            "def body():\n    for i in range(200000):\n        print('row', i)\n    return 0\n"
            "sys.exit(run_command(body))\n")
    done = subprocess.run(f"{sys.executable!s} -c \"{code}\" | head -1", shell=True, capture_output=True, text=True,
                          cwd=REPO, timeout=60)
    assert done.stdout == "row 0\n" and "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr
