"""What Postfix needs to put mmgate in front of Mailman: ``mmgate postfix``.

The lines are built from the gateway's settings, so they name the ports
mmgate really listens on; tests/test_postfix.py configures its Postfix with
:func:`main_cf` itself, so the recipe printed is the one tested.
"""

from __future__ import annotations

from mmgate.settings import GatewaySettings

#: Where the socketmap listens when the settings name no address.
DEFAULT_SOCKETMAP = ("127.0.0.1", 8027)


def main_cf(socketmap: tuple[str, int]) -> dict[str, str]:
    """The main.cf settings that hand Mailman's domains to mmgate: the
    domains, the recipients Postfix accepts at RCPT, and where it sends
    them, all answered live by mmgate's socketmap (no generated files);
    and XFORWARD, so mmgate knows who the client was."""
    host, port = socketmap
    table = f"socketmap:inet:{host}:{port}"
    return {
        "relay_domains": f"{table}:domains",
        "relay_recipient_maps": f"{table}:recipients",
        "transport_maps": f"{table}:transport",
        # the original client's address and HELO, for mmgate's relay
        # decisions, journal and Received: line (servers that do not offer
        # XFORWARD are sent nothing)
        "smtp_send_xforward_command": "yes",
        "lmtp_send_xforward_command": "yes",
    }


def recipe(settings: GatewaySettings) -> str:
    """The whole recipe, as text: both set-ups, from ``settings``."""
    socketmap = settings.socketmap or DEFAULT_SOCKETMAP
    listen = f"{settings.listen[0]}:{settings.listen[1]}"
    lmtp = f"{settings.lmtp[0]}:{settings.lmtp[1]}" if settings.lmtp else "127.0.0.1:8024"
    smap = f"{socketmap[0]}:{socketmap[1]}"
    lines = ["# main.cf: Mailman's domains handed to mmgate (both set-ups)"]
    lines += [f"{key} = {value}" for key, value in main_cf(socketmap).items()]
    lines += [
        "",
        "# master.cf: nothing to add; the stock smtp and lmtp transports are used.",
        "",
        "# Set-up 1, LMTP (mmgate in the place of Mailman's LMTP runner):",
        f"#   mmgate serve --socketmap {smap} --lmtp {lmtp}",
        "#   Mailman's [mta] smtp_host/smtp_port: Postfix (members' copies leave through it);",
        "#   Mailman's own LMTP runner must not run on that port.",
        "",
        "# Set-up 2, SMTP (list mail to mmgate's SMTP listener):",
        f"#   mmgate serve --socketmap {smap} --listen {listen} --relay POSTFIX_HOST:PORT",
        "#   Mailman's [mta] smtp_port: mmgate's listener; mmgate relays members' copies",
        "#   to Postfix, which must accept them from mmgate's address (mynetworks).",
        "",
        "# Either way, Postfix refuses an unknown address in a list domain at RCPT",
        '# ("550 5.1.1 ... User unknown in relay recipient table"): no bounce is made;',
        "# while mmgate cannot read Mailman, lookups are temporary (451 4.3.0).",
    ]
    if settings.socketmap is None:
        lines += [f"# (no socketmap is configured: add --socketmap {smap} or [postfix] socketmap)"]
    return "\n".join(lines) + "\n"
