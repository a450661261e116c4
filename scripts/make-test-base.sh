#!/usr/bin/env bash
# Build the test base image runner-test/base:bookworm-py311 without any container registry:
# debootstrap a minimal Debian bookworm root filesystem with python3, venv and pip, then
# `docker import` it.
#
#   scripts/make-test-base.sh
#
# Idempotent: does nothing when the image already exists. Needs root (or sudo -n), a Docker engine
# (scripts/provision-docker.sh is run first; it is quick when the engine is up) and the Debian mirror
# apt already uses on this machine.
#
# Environment:
#   TEST_BASE_IMAGE   image name (default runner-test/base:bookworm-py311)
#   DEBIAN_MIRROR     mirror to debootstrap from (default: the one in /etc/apt/sources.list*)
set -euo pipefail

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
IMAGE="${TEST_BASE_IMAGE:-runner-test/base:bookworm-py311}"
SUITE=bookworm
# python3-pip pulls setuptools, wheel and distutils; python3-venv the bundled pip/setuptools wheels
# that `python3 -m venv` installs; ca-certificates for TLS, should anything ever go online.
# g++ and python3-dev, as a pytorch *devel* base has them: DeepSpeed compiles its ops (the CPU
# backend's shared-memory collectives, cpu_adam) on first use, inside the job's container.
PACKAGES=python3,python3-venv,python3-pip,python3-dev,g++,ca-certificates

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
log() { printf 'make-test-base: %s\n' "$*" >&2; }
die() { printf 'make-test-base: ERROR: %s\n' "$*" >&2; exit 1; }
trap 'log "ERROR: failed at line $LINENO: $BASH_COMMAND"' ERR

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null \
        || die "must run as root (or with passwordless sudo): debootstrap needs it"
    SUDO=(sudo -n)
fi

# Engine up, debootstrap installed (quick when already there).
"$here/provision-docker.sh" >/dev/null

if "${SUDO[@]}" docker image inspect "$IMAGE" >/dev/null 2>&1; then
    # An image made by an earlier version of this script may lack what the list above adds.
    if "${SUDO[@]}" docker run --rm --network none "$IMAGE" \
        sh -c 'command -v c++ && test -e /usr/include/python3.11/Python.h' >/dev/null 2>&1; then
        log "$IMAGE already exists; nothing to do"
        exit 0
    fi
    log "$IMAGE lacks a C++ compiler or Python's headers; building it again"
fi

# ---------------------------------------------------------------- mirror
# The URI apt uses for a suite (exactly "$1": bookworm is not bookworm-security), deb822 or one-line format.
apt_mirror() {
    local f suite="$1"
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        awk -v suite="$suite" '
            function flush() { if (uri != "" && has && enabled) { print uri; found = 1; exit } uri = ""; has = 0; enabled = 1 }
            BEGIN { enabled = 1 }
            /^[[:space:]]*$/ { flush(); next }
            /^[[:space:]]*#/ { next }
            tolower($1) == "uris:" { uri = $2 }
            tolower($1) == "suites:" { for (i = 2; i <= NF; i++) if ($i == suite) has = 1 }
            tolower($1) == "enabled:" { enabled = (tolower($2) != "no") }
            END { if (!found) flush() }
        ' "$f"
    done
    { cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true; } \
        | sed -E 's/\[[^]]*\]//' \
        | awk -v suite="$suite" '$1 == "deb" && $3 == suite { print $2 }'
}
MIRROR="${DEBIAN_MIRROR:-}"
[ -n "$MIRROR" ] || MIRROR="$(apt_mirror "$SUITE" | head -n 1)" || true
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
MIRROR="${MIRROR%/}"
# Security updates come from the sibling archive; used only in the image's own sources.list.
SECURITY_MIRROR="$(apt_mirror "$SUITE-security" | head -n 1)" || true
SECURITY_MIRROR="${SECURITY_MIRROR:-http://deb.debian.org/debian-security}"

# ---------------------------------------------------------------- build
work="$("${SUDO[@]}" mktemp -d /var/tmp/runner-test-base.XXXXXX)"
rootfs="$work/rootfs"
cleanup() {
    # debootstrap mounts proc/sys inside the target; never rm -rf across a mount.
    local m
    for m in $(awk -v p="$work/" 'index($2, p) == 1 { print $2 }' /proc/mounts | sort -r); do
        "${SUDO[@]}" umount -l "$m" 2>/dev/null || true
    done
    "${SUDO[@]}" rm -rf --one-file-system "$work"
}
trap cleanup EXIT

log "debootstrap --variant=minbase $SUITE from $MIRROR (+ $PACKAGES)"
t0=$(date +%s)
if ! "${SUDO[@]}" debootstrap --variant=minbase --include="$PACKAGES" \
    --keyring=/usr/share/keyrings/debian-archive-keyring.gpg \
    "$SUITE" "$rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1; then
    tail -n 30 "$work/debootstrap.log" >&2
    [ -f "$rootfs/debootstrap/debootstrap.log" ] && tail -n 30 "$rootfs/debootstrap/debootstrap.log" >&2
    die "debootstrap failed"
fi
t1=$(date +%s)
log "debootstrap took $((t1 - t0)) s"

# Slim it down the way Debian's -slim images do, and keep later apt runs in derived images slim too.
"${SUDO[@]}" bash -euo pipefail -s "$rootfs" "$MIRROR" "$SECURITY_MIRROR" "$SUITE" <<'EOS'
r="$1" mirror="$2" security="$3" suite="$4"
cat >"$r/etc/apt/sources.list" <<EOF
deb $mirror $suite main
deb $mirror $suite-updates main
deb $security $suite-security main
EOF
cat >"$r/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
EOF
cat >"$r/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' >"$r/etc/apt/apt.conf.d/docker-no-recommends"
# Services must not start inside image builds.
printf '#!/bin/sh\nexit 101\n' >"$r/usr/sbin/policy-rc.d"
chmod 755 "$r/usr/sbin/policy-rc.d"

rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/*.bin "$r"/var/cache/apt/archives/*.deb \
    "$r"/var/cache/apt/archives/partial/* "$r"/var/cache/debconf/*-old "$r"/var/lib/dpkg/*-old \
    "$r"/tmp/* "$r"/var/tmp/* "$r"/root/.cache
find "$r/var/log" -type f -delete
find "$r/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$r/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$r"/usr/share/man/* "$r"/usr/share/info/* "$r"/usr/share/lintian/*
find "$r/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
# Docker bind-mounts these at run time; do not bake in the build host's.
: >"$r/etc/resolv.conf"
echo localhost >"$r/etc/hostname"
EOS

log "docker import $IMAGE"
"${SUDO[@]}" tar --numeric-owner -C "$rootfs" -c . \
    | "${SUDO[@]}" docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/bash"]' \
        --message "debootstrap --variant=minbase $SUITE + $PACKAGES from $MIRROR" \
        - "$IMAGE" >/dev/null

"${SUDO[@]}" docker run --rm --network none "$IMAGE" python3 -c 'import ensurepip, pip, venv' \
    || die "$IMAGE was imported but python3/pip/venv do not work in it"
size="$("${SUDO[@]}" docker image inspect --format '{{.Size}}' "$IMAGE")"
log "built $IMAGE ($((size / 1000000)) MB, debootstrap $((t1 - t0)) s, total $(($(date +%s) - t0)) s)"
