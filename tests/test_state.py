"""The session state machine table (mmgate.smtp.state)."""

from __future__ import annotations

import pytest

from mmgate.smtp import replies
from mmgate.smtp.state import TRANSITIONS, Phase, Step, advance, out_of_sequence


def test_a_whole_transaction_follows_the_table():
    phase = Phase.CONNECTED
    steps = (Step.GREET, Step.MAIL, Step.RCPT, Step.RCPT, Step.DATA, Step.RECEIVED, Step.END)
    for step in steps:
        phase = advance(phase, step)
    assert phase is Phase.GREETED


def test_a_move_not_in_the_table_is_an_error_not_a_silent_change():
    with pytest.raises(RuntimeError, match="Invalid step DATA in phase MAIL"):
        advance(Phase.MAIL, Step.DATA)


def test_every_phase_has_rules():
    assert set(TRANSITIONS) == set(Phase)


@pytest.mark.parametrize(
    "verb,phase,reply",
    [
        ("MAIL", Phase.CONNECTED, replies.SEND_HELO_FIRST),
        ("MAIL", Phase.RCPT, replies.NESTED_MAIL),
        ("RCPT", Phase.GREETED, replies.NEED_MAIL),
        ("DATA", Phase.MAIL, replies.NEED_RCPT),
    ],
)
def test_out_of_sequence_commands_get_503(verb: str, phase: Phase, reply: object):
    assert out_of_sequence(verb, phase) == reply


def test_commands_in_sequence_may_run():
    assert out_of_sequence("MAIL", Phase.GREETED) is None
    assert out_of_sequence("NOOP", Phase.CONNECTED) is None
