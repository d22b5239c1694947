"""``--conf``: one check for every command (a finite number in [0, 1], refused on the command
line before a model loads) and one default, the library's."""

from __future__ import annotations

import pytest

from detect.common.thresholds import CONF, ConfThresholds, parse_conf


@pytest.mark.parametrize("command", ["predict", "eval", "audit"])
@pytest.mark.parametrize("value, said", [("1.5", "1.5 is outside [0, 1]"), ("nan", "nan is outside [0, 1]"),
                                         ("-0.1", "-0.1 is outside [0, 1]"), ("high", "'high' is not a number")])
def test_every_command_refuses_the_same_bad_conf_before_loading_a_model(command, value, said, tmp_path,
                                                                       capsys) -> None:
    import importlib

    main = importlib.import_module(f"detect.{command}").main
    argv = {"predict": ["--weights", str(tmp_path / "none.onnx"), str(tmp_path)],
            "eval": ["--weights", str(tmp_path / "none.pt")],
            "audit": ["--weights", str(tmp_path / "none.pt"), "--data", str(tmp_path)]}[command]
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--conf", value])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and f"--conf {value}: {said}" in err and err.count("\n") == 1


@pytest.mark.parametrize("command", ["eval", "audit"])
def test_a_per_class_conf_is_predicts_alone(command, capsys) -> None:
    import importlib

    with pytest.raises(SystemExit) as exc:
        importlib.import_module(f"detect.{command}").main(["--weights", "x.pt", "--conf", "Lata=0.3"])
    assert exc.value.code == 2 and "per-class thresholds are for detect.predict" in capsys.readouterr().err


def test_the_default_is_one_constant_everywhere() -> None:
    import inspect

    from detect.audit import build_parser as audit_parser
    from detect.checks.label_audit import AuditSettings
    from detect.eval import build_parser as eval_parser
    from detect.inference.predictor import Predictor
    from detect.scoring.evaluation import EvalSettings
    from detect.scoring.metrics import detection_confusion

    assert eval_parser().parse_args([]).conf == audit_parser().parse_args(["--weights", "w"]).conf == CONF
    assert AuditSettings().conf == EvalSettings().conf == CONF
    assert inspect.signature(Predictor).parameters["conf"].default == CONF
    assert inspect.signature(detection_confusion).parameters["score_threshold"].default == CONF
    assert parse_conf(None, ["Lata"]) == ConfThresholds(CONF) and ConfThresholds().default == CONF
    # an audit at 0 (every detection counts as confident) is allowed, as everywhere else
    assert AuditSettings(conf=0.0).conf == 0.0


def test_track_counts_at_its_own_default_unless_a_plain_conf_is_given() -> None:
    from detect.line.options import TRACK_CONF

    assert parse_conf(["Lata=0.7"], ["Lata", "Botella"], default=TRACK_CONF) == ConfThresholds(TRACK_CONF, {"Lata": 0.7})
    assert parse_conf(["0.4,Lata=0.7"], ["Lata"], default=TRACK_CONF) == ConfThresholds(0.4, {"Lata": 0.7})
