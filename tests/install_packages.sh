#!/bin/sh
# Debian's Postfix, HAProxy and PostgreSQL for the tests (tests/postfix.py,
# tests/haproxy.py, tests/postgres.py), installed where missing. The packages' own instances
# are never configured or started: the tests run instances of their own on
# 127.0.0.1 ports (never port 25), and stop them by PID.
set -eu
missing=""
command -v postfix >/dev/null 2>&1 || missing="$missing postfix"
command -v haproxy >/dev/null 2>&1 || missing="$missing haproxy"
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing="$missing postgresql"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "install_packages: not root; the tests that need$missing are skipped (apt-get install$missing as root)" >&2
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
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing >/dev/null
if [ -n "$created" ]; then rm -f /usr/sbin/policy-rc.d; fi
command -v postfix >/dev/null && command -v haproxy >/dev/null &&
    ls /usr/lib/postgresql/*/bin/postgres >/dev/null
