#!/bin/sh
# Debian's Postfix for the tests (tests/postfix.py), installed where it is
# missing. The package's own instance is never configured or started: the
# tests run instances of their own on 127.0.0.1 ports, never port 25.
set -eu
command -v postfix >/dev/null 2>&1 && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "install_postfix: not root; the Postfix tests are skipped (apt-get install postfix as root)" >&2
    exit 0
fi
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
created=""
if [ ! -e /usr/sbin/policy-rc.d ]; then  # no service may start during the install
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    created=yes
fi
apt-get update -q >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postfix >/dev/null
if [ -n "$created" ]; then rm -f /usr/sbin/policy-rc.d; fi
command -v postfix >/dev/null
