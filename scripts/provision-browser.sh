#!/usr/bin/env bash
# Provision what the board's browser tests drive: Debian's Chromium, and iproute2 (the tests put
# the board and the browser in a network namespace of their own that has no route but loopback).
#
#   scripts/provision-browser.sh
#
# The driver library (playwright, from the project's dev dependencies) talks to this Chromium
# over a pipe; no test tool downloads a browser of its own. A CJK font is installed too, so the
# screenshots show the Chinese of the demo data rather than empty boxes.
#
# Idempotent and quick when everything is already there. Needs root (or sudo -n).
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

log() { printf 'provision-browser: %s\n' "$*" >&2; }
die() { printf 'provision-browser: ERROR: %s\n' "$*" >&2; exit 1; }

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null \
        || die "must run as root (or with passwordless sudo)"
    SUDO=(sudo -n)
fi

missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v unshare >/dev/null 2>&1 || missing+=(util-linux)
dpkg -s fonts-wqy-microhei >/dev/null 2>&1 || missing+=(fonts-wqy-microhei)

if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]} from Debian"
    apt_opts=(-qq -o DPkg::Lock::Timeout=300)
    "${SUDO[@]}" apt-get "${apt_opts[@]}" update >/dev/null \
        || log "warning: apt-get update reported errors; trying the install anyway"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" install -y \
        --no-install-recommends "${missing[@]}" >/tmp/provision-browser-apt.log 2>&1 \
        || { tail -n 30 /tmp/provision-browser-apt.log >&2; die "apt-get install ${missing[*]} failed"; }
fi

[ -x /usr/bin/chromium ] || die "/usr/bin/chromium still missing after installing chromium"
printf '%s\n' "$(/usr/bin/chromium --version 2>/dev/null || echo 'chromium (version unknown)')"
