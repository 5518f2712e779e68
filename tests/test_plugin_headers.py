"""The headers plugin: fields added and removed on accepted mail."""

from __future__ import annotations

import smtplib

import pytest
from mmgate_plugins.headers import Headers

from tests.harness import Recorder, serving

BODY = (
    b"X-Spam-Flag: YES\r\nSubject: hi\r\nX-Spam-Flag: also\r\n folded on\r\n"
    b"To: b@example.org\r\n\r\nX-Spam-Flag: in the body stays\r\n"
)


def test_fields_are_removed_then_added_and_the_body_is_untouched():
    plugin = Headers(
        add={"X-Gateway": "mmgate", "X-Client": "{client_ip} said {helo}\r\nInjected: no"},
        remove=["x-spam-flag"],
    )
    server = Recorder(("127.0.0.1", 0), None, plugins=[plugin])
    server.data_line_ending = "\r\n"
    with serving(server) as address, smtplib.SMTP(*address) as client:
        client.ehlo("client.example")
        client.sendmail("a@example.com", ["b@example.org"], BODY)
    assert server.messages[0]["data"] == (
        b"X-Gateway: mmgate\r\nX-Client: 127.0.0.1 said client.example  Injected: no\r\n"
        b"Subject: hi\r\nTo: b@example.org\r\n\r\nX-Spam-Flag: in the body stays\r\n"
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"add": {"Bad Name": "x"}}, "is not a field name"),
        ({"add": {"X-Num": 3}}, "is not a field name and a string"),
        ({"remove": ["Colon:"]}, "is not a field name"),
    ],
)
def test_bad_options_are_refused_when_built(options: dict[str, object], message: str):
    with pytest.raises(ValueError, match=message):
        Headers(**options)  # type: ignore[arg-type]
