#!/usr/bin/env bash
# Start a real Slurm cluster on this machine for the test tier: slurmctld and two compute nodes
# (slurmd runner-n1 and runner-n2), CPU only, from Debian's packages, without systemd or a network.
#
#   scripts/provision-slurm.sh         start it (idempotent: well under a second when it is up)
#   scripts/provision-slurm.sh stop    stop its daemons
#
# Two slurmd on one host, with Debian's build (no --enable-multiple-slurmd):
# - each node is `slurmd -N NAME` with its own port, spool directory, log and pid file (%n);
# - each daemon has its own munged (one key): munge refuses a credential it has already decoded
#   (a replay), and Slurm hands the same credential to every node of a job;
# - proctrack/linuxproc and task/none: the cgroup plugins would give both nodes the same cgroup
#   paths (slurm/uid_U/job_J), as only a multiple-slurmd build adds the node's name to them;
# - both nodes have NodeAddr 127.0.0.1: a job's containers (Docker, host network) reach the
#   rendezvous on its first node there. Their containers run in this machine's Docker engine,
#   so every node has the images it has (scripts/provision-docker.sh starts it).
#
# Clients find the cluster through /etc/slurm/slurm.conf (a link to the generated file, made
# only where no other configuration is there) or SLURM_CONF=$RUNNER_SLURM_DIR/slurm.conf.
# Needs root (or sudo -n) and Debian's slurmctld, slurmd, slurm-client and munge (installed when
# missing).
#
# Environment:
#   RUNNER_SLURM_DIR    state, logs and configuration (default /var/lib/runner-slurm)
#   RUNNER_SLURM_PORT   slurmctld's port; the nodes take the next ones (default 16817)
#   RUNNER_SLURM_WAIT_S seconds to wait for the nodes (default 60)
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

DIR="${RUNNER_SLURM_DIR:-/var/lib/runner-slurm}"
PORT="${RUNNER_SLURM_PORT:-16817}"
WAIT_S="${RUNNER_SLURM_WAIT_S:-60}"
NODES=(runner-n1 runner-n2)
CONF="$DIR/slurm.conf"
export SLURM_CONF="$CONF"

log() { printf 'provision-slurm: %s\n' "$*" >&2; }
die() { printf 'provision-slurm: ERROR: %s\n' "$*" >&2; exit 1; }
trap 'log "ERROR: failed at line $LINENO: $BASH_COMMAND"' ERR

[ "$(id -u)" -eq 0 ] || exec sudo -n "$0" "$@"  # the daemons run as root; sudo -n fails clearly

# A daemon is alive when its pid file names a running process of that name.
alive() {  # NAME PIDFILE
    local pid
    [ -s "$2" ] || return 1
    pid="$(cat "$2")"
    [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$1" ]
}

# Stop this cluster's daemons, by their pid files (a pid now used by another program is left alone).
stop_all() {
    local name daemon
    for name in "${NODES[@]}" ctld; do
        for daemon in slurmd slurmctld munged; do
            if alive "$daemon" "$DIR/$name/$daemon.pid"; then kill "$(cat "$DIR/$name/$daemon.pid")"; fi
            rm -f "$DIR/$name/$daemon.pid"
        done
    done
    sleep 1
}

if [ "${1:-}" = stop ]; then
    stop_all
    log "stopped"
    exit 0
fi

# ---------------------------------------------------------------- packages
missing=()
command -v slurmctld >/dev/null 2>&1 || missing+=(slurmctld)
command -v slurmd >/dev/null 2>&1 || missing+=(slurmd)
command -v sbatch >/dev/null 2>&1 || missing+=(slurm-client)
command -v munged >/dev/null 2>&1 || missing+=(munge)
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]} from Debian"
    apt_opts=(-qq -o DPkg::Lock::Timeout=300)
    apt-get "${apt_opts[@]}" update >/dev/null || log "warning: apt-get update reported errors"
    # No daemon starts on install (policy-rc.d): this script starts its own, with its own files.
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d.runner-slurm
    chmod 755 /usr/sbin/policy-rc.d.runner-slurm
    [ -e /usr/sbin/policy-rc.d ] || ln -s policy-rc.d.runner-slurm /usr/sbin/policy-rc.d
    apt-get "${apt_opts[@]}" install -y --no-install-recommends "${missing[@]}" \
        >/tmp/provision-slurm-apt.log 2>&1 \
        || { tail -n 30 /tmp/provision-slurm-apt.log >&2; die "apt-get install ${missing[*]} failed"; }
    [ "$(readlink /usr/sbin/policy-rc.d 2>/dev/null)" = policy-rc.d.runner-slurm ] && rm -f /usr/sbin/policy-rc.d
    rm -f /usr/sbin/policy-rc.d.runner-slurm
fi

# ---------------------------------------------------------------- configuration
host="$(hostname -s)"
mkdir -p "$DIR/ctld/state"
for node in "${NODES[@]}"; do mkdir -p "$DIR/$node/spool"; done
chmod 755 "$DIR"
[ -s "$DIR/munge.key" ] || mungekey --create --keyfile="$DIR/munge.key" --force
chmod 600 "$DIR/munge.key"

# AUTH: the munged socket of the daemon that reads this file.
config() {
    cat <<EOF
# Written by scripts/provision-slurm.sh: runner's test cluster, two slurmd on one host.
ClusterName=runner-test
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$1
StateSaveLocation=$DIR/ctld/state
SlurmctldPidFile=$DIR/ctld/slurmctld.pid
SlurmctldLogFile=$DIR/ctld/slurmctld.log
SlurmdSpoolDir=$DIR/%n/spool
SlurmdPidFile=$DIR/%n/slurmd.pid
SlurmdLogFile=$DIR/%n/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
ReturnToService=2
JobRequeue=1
KillWait=30
MinJobAge=300
InactiveLimit=0
SlurmdTimeout=120
# The nodes' files differ in AuthInfo alone.
DebugFlags=NO_CONF_HASH
EOF
    local i=2
    for node in "${NODES[@]}"; do
        echo "NodeName=$node NodeAddr=127.0.0.1 NodeHostname=$host Port=$((PORT + i)) CPUs=$(nproc) RealMemory=2048 State=UNKNOWN"
        i=$((i + 1))
    done
    echo "PartitionName=runner Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
}

changed=0
write_if_changed() {  # FILE, text on stdin
    local new
    new="$(cat)"
    if [ ! -f "$1" ] || [ "$(cat "$1")" != "$new" ]; then
        printf '%s\n' "$new" >"$1"
        changed=1
    fi
}
config "$DIR/ctld/munge.socket" | write_if_changed "$CONF"
for node in "${NODES[@]}"; do
    config "$DIR/$node/munge.socket" | write_if_changed "$DIR/$node/slurm.conf"
done
if [ ! -e /etc/slurm/slurm.conf ] || [ "$(readlink /etc/slurm/slurm.conf)" = "$CONF" ]; then
    mkdir -p /etc/slurm
    ln -sfn "$CONF" /etc/slurm/slurm.conf
else
    log "note: /etc/slurm/slurm.conf is another cluster's; clients need SLURM_CONF=$CONF"
fi

# ---------------------------------------------------------------- daemons
up() {
    local state
    state="$(sinfo --noheader --Node --format='%N %t' 2>/dev/null)" || return 1
    for node in "${NODES[@]}"; do
        grep -Eq "^$node (idle|mix|alloc|comp)" <<<"$state" || return 1
    done
}

all_alive() {
    alive munged "$DIR/ctld/munged.pid" && alive slurmctld "$DIR/ctld/slurmctld.pid" || return 1
    for node in "${NODES[@]}"; do
        alive munged "$DIR/$node/munged.pid" && alive slurmd "$DIR/$node/slurmd.pid" || return 1
    done
}

if [ "$changed" = 0 ] && all_alive && up; then
    log "up: $(sinfo --noheader --Node --format='%N %t' | tr '\n' ' ')(SLURM_CONF=$CONF)"
    exit 0
fi

t0=$(date +%s)
stop_all
start_munged() {  # NAME
    munged --socket="$DIR/$1/munge.socket" --pid-file="$DIR/$1/munged.pid" \
        --log-file="$DIR/$1/munged.log" --seed-file="$DIR/$1/munged.seed" --key-file="$DIR/munge.key"
}
start_munged ctld
# -c: a clean start (no jobs carried over from an earlier cluster on these files).
slurmctld -c -f "$CONF"
for node in "${NODES[@]}"; do
    start_munged "$node"
    slurmd -N "$node" -f "$DIR/$node/slurm.conf"
done

for ((i = 0; i < WAIT_S * 4; i++)); do
    up && break
    sleep 0.25
done
if ! up; then
    sinfo --Node >&2 || true
    for f in "$DIR/ctld/slurmctld.log" "$DIR"/runner-n*/slurmd.log; do
        echo "---- last lines of $f ----" >&2
        tail -n 15 "$f" >&2 || true
    done
    die "the nodes did not come up within ${WAIT_S}s"
fi
log "started in $(($(date +%s) - t0)) s: $(sinfo --noheader --Node --format='%N %t' | tr '\n' ' ')(SLURM_CONF=$CONF)"
