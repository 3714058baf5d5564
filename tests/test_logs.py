import pytest

from melanoma.errors import MelanomaError
from melanoma.logs import exit_on


def test_a_users_error_becomes_its_message_and_exit_status_1(caplog):
    with pytest.raises(SystemExit) as stopped, exit_on():
        raise MelanomaError("params.yaml: train.epochs must be >= 1")

    assert stopped.value.code == 1
    assert "params.yaml: train.epochs must be >= 1" in caplog.text


def test_other_errors_pass_through_with_their_traceback():
    with pytest.raises(ValueError), exit_on():
        raise ValueError("a bug, not bad input")
