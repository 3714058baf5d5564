import pytest

from melanoma.logs import exit_on


def test_a_named_error_becomes_its_message_and_exit_status_1(caplog):
    with pytest.raises(SystemExit) as stopped, exit_on(KeyError, ValueError):
        raise ValueError("params.yaml: train.epochs must be >= 1")

    assert stopped.value.code == 1
    assert "params.yaml: train.epochs must be >= 1" in caplog.text


def test_other_errors_pass_through_with_their_traceback():
    with pytest.raises(TypeError), exit_on(ValueError):
        raise TypeError("a bug, not bad input")
