"""The sans-I/O session core, with no socket: bytes in, events out; replies
in, bytes out. Every check here is on the core alone."""

from __future__ import annotations

import pytest

from mmgate.smtp import replies
from mmgate.smtp.errors import ProtocolError
from mmgate.smtp.events import (
    Command,
    DataRequest,
    Hello,
    MailFrom,
    Noop,
    Quit,
    RcptTo,
    Unknown,
)
from mmgate.smtp.framing import MessageData
from mmgate.smtp.limits import Limits
from mmgate.smtp.replies import Reply
from mmgate.smtp.session import Session, SessionConfig
from mmgate.smtp.state import Phase


def _events(session: Session, data: bytes) -> list[Command | MessageData]:
    session.receive_data(data)
    out = []
    while (event := session.next_event()) is not None:
        out.append(event)
    return out


def _greeted(**config: object) -> Session:
    session = Session(SessionConfig(**config))  # type: ignore[arg-type]
    (command,) = _events(session, b"EHLO client.example\r\n")
    hello = session.interpret(command)
    assert hello == Hello("client.example", True)
    session.greet(hello)  # type: ignore[arg-type]
    return session


def test_commands_become_typed_events_with_parsed_paths_and_parameters():
    session = _greeted()
    mail_cmd, rcpt_cmd, noop_cmd, quit_cmd, other = _events(
        session,
        b"MAIL FROM:<a@example.com> SIZE=1000 BODY=8bitmime\r\n"
        b"RCPT TO:<b@example.org>\r\nNOOP\r\nQUIT\r\nXFOO bar\r\n",
    )
    mail = session.interpret(mail_cmd)
    assert mail == MailFrom(
        "a@example.com",
        {"SIZE": "1000", "BODY": "8bitmime"},
        ("SIZE=1000", "BODY=8bitmime"),
        False,
        "8BITMIME",
        1000,
    )
    assert isinstance(mail, MailFrom)
    session.open_transaction(mail)
    assert session.interpret(rcpt_cmd) == RcptTo("b@example.org")
    assert session.interpret(noop_cmd) == Noop()
    assert session.interpret(quit_cmd) == Quit()
    assert session.interpret(other) == Unknown("XFOO", "bar")


def test_a_pipelined_message_is_read_only_after_data_is_accepted():
    session = _greeted()
    events = _events(
        session,
        b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"
        b"Subject: hi\r\n\r\n.line\r\n.\r\nNOOP\r\n",
    )
    # The framer does not guess: until DATA is accepted, everything is a command.
    verbs = [e.verb for e in events if isinstance(e, Command)]
    assert verbs[:4] == ["MAIL", "RCPT", "DATA", "SUBJECT:"]
    assert not any(isinstance(e, MessageData) for e in events)


def test_message_text_follows_the_state_table_and_holds_later_commands():
    session = _greeted()
    session.receive_data(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
    for command in iter(session.next_event, None):
        assert isinstance(command, Command)
        event = session.interpret(command)
        if isinstance(event, MailFrom):
            session.open_transaction(event)
        elif isinstance(event, RcptTo):
            session.add_recipient(event)
        else:
            assert isinstance(event, DataRequest)
            session.start_data()
    assert session.phase is Phase.DATA
    (message, *rest) = _events(session, b"Subject: hi\r\n\r\n..dot\r\n.\r\nNOOP\r\n")
    assert rest == []  # NOOP waits until the message is answered
    assert isinstance(message, MessageData)
    assert message.data == b"Subject: hi\r\n\r\n.dot\r\n"
    assert session.phase is Phase.RECEIVED and session.next_event() is None
    session.send(replies.MESSAGE_ACCEPTED)
    session.end_transaction()
    assert session.phase is Phase.GREETED and session.mailfrom is None
    (noop,) = _events(session, b"")
    assert isinstance(noop, Command) and noop.verb == "NOOP"
    assert session.data_to_send() == b"250 2.0.0 OK\r\n"


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        ("MAIL FROM:<a@example.com> SIZE=\u00b2", replies.BAD_SIZE),  # a Unicode digit
        ("MAIL FROM:<a@example.com> SIZE=99999999999", replies.SIZE_EXCEEDED),
        ("MAIL FROM:<a@example.com> BODY=9BIT", replies.BAD_BODY_BINARY),
        ("MAIL FROM:<a@example.com> FOO=1", replies.MAIL_PARAMS_UNKNOWN),
        ("MAIL FROM:a@example.com>", replies.SYNTAX_MAIL_EXT),
        ("RCPT TO:<b@example.org>", replies.NEED_MAIL),
        ("DATA", replies.NEED_RCPT),
    ],
)
def test_bad_commands_raise_their_reply(line: str, reply: object):
    session = _greeted()
    (command,) = _events(session, line.encode() + b"\r\n")
    with pytest.raises(ProtocolError) as raised:
        session.interpret(command)
    assert raised.value.reply == reply


def test_the_recipient_cap_is_452_4_5_3():
    session = _greeted(limits=Limits(recipients=100))
    session.open_transaction(MailFrom("a@example.com"))
    for n in range(100):
        session.add_recipient(RcptTo(f"r{n}@example.org"))
    (command,) = _events(session, b"RCPT TO:<one.more@example.org>\r\n")
    with pytest.raises(ProtocolError) as raised:
        session.interpret(command)
    assert raised.value.reply == replies.TOO_MANY_RECIPIENTS


def test_lines_that_are_errors_in_themselves_are_answered_by_the_core():
    session = _greeted()
    assert _events(session, b"\r\n" + b"NOOP " + b"x" * 600 + b"\r\n") == []
    assert session.data_to_send() == (
        b"500 5.5.2 Error: bad syntax\r\n500 5.5.2 Error: line too long\r\n"
    )


def test_too_many_errors_end_the_session_with_421():
    session = Session(SessionConfig(max_errors=3))
    assert _events(session, b"\r\n\r\n\r\nNOOP\r\n") == []
    assert session.closing
    assert session.data_to_send().endswith(b"421 4.7.0 Too many errors, closing channel\r\n")
    session.send(replies.OK)
    assert session.data_to_send() == b""  # nothing after the 421


def test_only_an_accepted_message_resets_the_error_count():
    session = Session(SessionConfig(max_errors=3))
    session.send(replies.BAD_SYNTAX)
    session.send(replies.OK)  # NOOP does not forgive
    session.send(Reply(450, "4.2.1", "Try later"))  # a refusal of any class counts
    assert session.errors == 2 and not session.closing
    session.greet(Hello("client.example", True))
    session.open_transaction(MailFrom("a@example.com"))
    session.add_recipient(RcptTo("b@example.org"))
    session.start_data()
    session.receive_data(b"x\r\n.\r\n")
    assert isinstance(session.next_event(), MessageData)
    session.end_transaction(accepted=True)
    assert session.errors == 0


def test_the_line_limit_grows_with_what_ehlo_offered():
    session = Session()
    limit_helo = session._line_limit("MAIL")
    session.greet(Hello("client.example", True))
    assert session._line_limit("MAIL") == limit_helo + 26 + 14  # RFC 1870, RFC 6152
