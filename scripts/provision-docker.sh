#!/usr/bin/env bash
# Provision a Docker engine on a bare Debian bookworm machine, without any container registry.
#
#   scripts/provision-docker.sh
#
# - installs Debian's docker.io (dockerd, containerd, runc), docker-compose, debootstrap and
#   the shell linter shellcheck (the tests check rendered sbatch scripts) when missing;
# - starts dockerd directly (there is no systemd here) when no engine answers, logging to
#   /var/log/dockerd.log, and waits for it;
# - prints one line: engine version and storage driver.
#
# Idempotent and quick (well under a second) when everything is already there. Needs root (or sudo -n).
#
# Environment:
#   DOCKERD_STORAGE_DRIVER  force a storage driver (overlay2, fuse-overlayfs, vfs); default: probe
#   DOCKERD_LOG             dockerd log file (default /var/log/dockerd.log)
#   DOCKERD_WAIT_S          seconds to wait for the engine (default 60)
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
# dockerd, debootstrap and iptables live in sbin, which a non-login PATH may lack.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

DOCKERD_LOG="${DOCKERD_LOG:-/var/log/dockerd.log}"
DOCKERD_WAIT_S="${DOCKERD_WAIT_S:-60}"
DOCKER_ROOT="/var/lib/docker"
PIDFILE="/var/run/docker.pid"

log() { printf 'provision-docker: %s\n' "$*" >&2; }
die() { printf 'provision-docker: ERROR: %s\n' "$*" >&2; exit 1; }
trap 'log "ERROR: failed at line $LINENO: $BASH_COMMAND"' ERR

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null \
        || die "must run as root (or with passwordless sudo)"
    SUDO=(sudo -n)
fi

# The client that `docker` resolves to. /usr/local/bin/docker (a newer static CLI) shadows Debian's
# /usr/bin/docker on PATH; both negotiate the API version down to the engine's, so either works.
engine_up() { "${SUDO[@]}" docker info >/dev/null 2>&1; }

# ---------------------------------------------------------------- packages
missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
# The tests check the sbatch scripts runner renders with it.
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)

if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]} from Debian"
    apt_opts=(-qq -o DPkg::Lock::Timeout=300)
    # A broken third-party source should not stop us: the install below says clearly if it matters.
    "${SUDO[@]}" apt-get "${apt_opts[@]}" update >/dev/null \
        || log "warning: apt-get update reported errors; trying the install anyway"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" install -y \
        --no-install-recommends "${missing[@]}" >/tmp/provision-docker-apt.log 2>&1 \
        || { tail -n 30 /tmp/provision-docker-apt.log >&2; die "apt-get install ${missing[*]} failed"; }
    command -v dockerd >/dev/null 2>&1 || die "dockerd still missing after installing docker.io"
fi

# ---------------------------------------------------------------- engine
# Pick a storage driver that really mounts here. overlay2 first (fast, small); if the kernel or the
# backing filesystem refuses an overlay mount (nested containers, overlay-on-overlay), fall back to
# fuse-overlayfs, then vfs (always works, but copies every layer in full).
probe_overlay() {
    local d rc=1
    "${SUDO[@]}" mkdir -p "$DOCKER_ROOT"
    d="$("${SUDO[@]}" mktemp -d "$DOCKER_ROOT/.overlay-probe.XXXXXX")"
    "${SUDO[@]}" mkdir -p "$d/lower" "$d/upper" "$d/work" "$d/merged"
    if "${SUDO[@]}" mount -t overlay overlay \
        -o "lowerdir=$d/lower,upperdir=$d/upper,workdir=$d/work" "$d/merged" 2>/dev/null; then
        # Write through the mount to make sure copy-up works, not only the mount call.
        "${SUDO[@]}" sh -c "echo ok > '$d/merged/probe'" 2>/dev/null && rc=0
        "${SUDO[@]}" umount "$d/merged" 2>/dev/null || true
    fi
    "${SUDO[@]}" rm -rf --one-file-system "$d"
    return "$rc"
}

probe_fuse_overlayfs() {
    [ -e /dev/fuse ] || return 1
    if ! command -v fuse-overlayfs >/dev/null 2>&1; then
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -qq -o DPkg::Lock::Timeout=300 \
            install -y --no-install-recommends fuse-overlayfs >/dev/null 2>&1 || return 1
    fi
    local d rc=1
    d="$("${SUDO[@]}" mktemp -d "$DOCKER_ROOT/.fuse-probe.XXXXXX")"
    "${SUDO[@]}" mkdir -p "$d/lower" "$d/upper" "$d/work" "$d/merged"
    if "${SUDO[@]}" fuse-overlayfs -o "lowerdir=$d/lower,upperdir=$d/upper,workdir=$d/work" \
        "$d/merged" 2>/dev/null; then
        "${SUDO[@]}" sh -c "echo ok > '$d/merged/probe'" 2>/dev/null && rc=0
        "${SUDO[@]}" fusermount -u "$d/merged" 2>/dev/null || "${SUDO[@]}" umount "$d/merged" || true
    fi
    "${SUDO[@]}" rm -rf --one-file-system "$d"
    return "$rc"
}

choose_storage_driver() {
    if [ -n "${DOCKERD_STORAGE_DRIVER:-}" ]; then echo "$DOCKERD_STORAGE_DRIVER"; return; fi
    # A daemon.json that names a driver wins; passing the flag as well would make dockerd refuse to start.
    if grep -qs '"storage-driver"' /etc/docker/daemon.json; then echo ""; return; fi
    if probe_overlay; then
        # Let dockerd pick: overlay2 on a fresh root, or the driver an earlier run left in /var/lib/docker.
        echo ""
    elif probe_fuse_overlayfs; then
        echo fuse-overlayfs
    else
        echo vfs
    fi
}

dockerd_alive() {
    local pid
    [ -s "$PIDFILE" ] || return 1
    pid="$("${SUDO[@]}" cat "$PIDFILE" 2>/dev/null)" || return 1
    [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = dockerd ]
}

# Any dockerd process at all (no procps on minimal systems, so read /proc).
any_dockerd() { grep -qsx dockerd /proc/[0-9]*/comm; }

start_dockerd() {
    # setsid + nohup: the engine outlives this script and the CI step's shell.
    local flags=("$@")
    log "starting dockerd ${flags[*]:-} (log: $DOCKERD_LOG)"
    "${SUDO[@]}" mkdir -p "$(dirname "$DOCKERD_LOG")"
    printf '\n==== %s provision-docker: dockerd %s\n' "$(date -u +%FT%TZ)" "${flags[*]:-}" \
        | "${SUDO[@]}" tee -a "$DOCKERD_LOG" >/dev/null
    "${SUDO[@]}" setsid nohup dockerd "${flags[@]}" </dev/null >>"$DOCKERD_LOG" 2>&1 &
}

wait_engine() {
    local i
    for ((i = 0; i < DOCKERD_WAIT_S * 2; i++)); do
        engine_up && return 0
        # Give up early if the daemon died (bad flag, iptables, storage driver ...).
        if [ "$i" -ge 4 ] && ! dockerd_alive && ! any_dockerd; then return 1; fi
        sleep 0.5
    done
    return 1
}

if ! engine_up; then
    if dockerd_alive; then
        log "dockerd is running but not answering yet; waiting"
    else
        driver="$(choose_storage_driver)"
        flags=()
        [ -n "$driver" ] && flags+=("--storage-driver=$driver")
        start_dockerd "${flags[@]}"
    fi
    if ! wait_engine; then
        # Without NAT/iptables support (some sandboxes) dockerd dies creating its bridge chains.
        # Containers with --network none (all we need) do not need iptables: retry without it.
        if ! dockerd_alive && tail -n 50 "$DOCKERD_LOG" 2>/dev/null | grep -qiE 'iptables|nat chain'; then
            log "dockerd failed on iptables; retrying with --iptables=false"
            flags+=(--iptables=false)
            start_dockerd "${flags[@]}"
            wait_engine || true
        fi
    fi
    if ! engine_up; then
        echo "---- last lines of $DOCKERD_LOG ----" >&2
        tail -n 40 "$DOCKERD_LOG" >&2 || true
        die "the Docker engine did not answer within ${DOCKERD_WAIT_S}s (see $DOCKERD_LOG)"
    fi
fi

# A client too old or too new for the engine would fail here, not later in the middle of a build.
"${SUDO[@]}" docker version --format '{{.Server.Version}}' >/dev/null 2>&1 \
    || die "'$(command -v docker)' cannot talk to the engine; try /usr/bin/docker (Debian's client)"

"${SUDO[@]}" docker info --format \
    "docker engine {{.ServerVersion}}, storage driver {{.Driver}}, client $(docker version --format '{{.Client.Version}} (API {{.Client.APIVersion}})' 2>/dev/null) at $(command -v docker)"
