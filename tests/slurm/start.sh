#!/usr/bin/env bash
# A single-node SLURM on this host, for the tests (and for trying the README's cluster commands):
# munged, slurmctld and slurmd, with a slurm.conf generated for this host's cores and memory, no cgroups,
# no accounting daemon (finished jobs go to a job-completion log), and optional fake GPUs.
#
#   tests/slurm/start.sh DIR [GPUS]      start; prints `export SLURM_CONF=DIR/slurm.conf`
#   tests/slurm/stop.sh DIR              stop exactly the daemons this script started
#
# Installs Debian's slurm-wlm and munge where missing (needs root and the package registry). Everything it
# writes lives in DIR (config, state, logs, sockets, PID files); DIR is wiped first, because saved node
# state from an earlier cluster leaves the node in DRAIN. Exit 0 when the node is idle; otherwise non-zero
# with the reason on stderr (the test fixture reports it).
set -euo pipefail
DIR=${1:?usage: start.sh DIR [GPUS]}
GPUS=${2:-0}
fail() { echo "start.sh: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "must run as root (slurmd and munged run as root here)"
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    echo "start.sh: installing slurm-wlm and munge" >&2
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -q && apt-get install -y -q slurm-wlm munge; } >&2 || fail "apt-get install slurm-wlm munge failed"
fi
for d in munged slurmctld slurmd sinfo; do command -v $d >/dev/null || fail "$d not found after installing"; done

[ -e "$DIR/slurmctld.pid" ] && fail "$DIR holds a running cluster? stop it first: tests/slurm/stop.sh $DIR"
rm -rf "$DIR"
mkdir -p "$DIR"/{munge,state,spool,log,dev}
DIR=$(cd "$DIR" && pwd)
chmod 700 "$DIR/munge"

# munge: a fresh key and a private socket (no clash with a system munged; /run/munge is not needed).
dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$DIR/munge/munge.key"
munged --force --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket" \
       --pid-file="$DIR/munge.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed" \
    || fail "munged did not start (see $DIR/log/munged.log)"

HOST=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo)
REAL_MB=$(( MEM_MB * 9 / 10 ))        # RealMemory above what slurmd finds makes the node invalid
DEF_MB=$(( REAL_MB / CPUS ))          # without DefMemPerCPU one job takes the whole node's memory

GRES_NODE=""
if [ "$GPUS" -gt 0 ]; then             # fake GPUs: character devices, no autodetection
    GRES_NODE="Gres=gpu:$GPUS"
    : > "$DIR/gres.conf"
    for i in $(seq 0 $(( GPUS - 1 ))); do
        mknod "$DIR/dev/gpu$i" c 1 3
        echo "NodeName=$HOST Name=gpu File=$DIR/dev/gpu$i" >> "$DIR/gres.conf"
    done
    sed -i "1i AutoDetect=off" "$DIR/gres.conf"
fi

cat > "$DIR/slurm.conf" <<CONF
ClusterName=fmbp
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldPort=${SLURMCTLD_PORT:-6817}
SlurmdPort=${SLURMD_PORT:-6818}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MinJobAge=300
ReturnToService=2
GresTypes=gpu
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$REAL_MB $GRES_NODE State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE DefMemPerCPU=$DEF_MB State=UP
CONF
[ "$GPUS" -gt 0 ] || : > "$DIR/gres.conf"
export SLURM_CONF="$DIR/slurm.conf"

# The executor plugin's job step drops SLURM_CONF before its inner `srun`, which then reads the default
# /etc/slurm/slurm.conf: link it to ours, unless a real configuration is there (never replaced).
SYS=/etc/slurm/slurm.conf
ours() { [ -L "$SYS" ] && { ! [ -e "$SYS" ] || [ -e "$(dirname "$(readlink "$SYS")")/fmbp-test-cluster" ]; }; }
if [ -e "$SYS" ] || [ -L "$SYS" ]; then
    ours || fail "$SYS is a real SLURM configuration (not a link left by this script): not replacing it"
fi
touch "$DIR/fmbp-test-cluster"
mkdir -p /etc/slurm
ln -sfn "$SLURM_CONF" "$SYS"

slurmctld -f "$SLURM_CONF" || fail "slurmctld did not start (see $DIR/log/slurmctld.log)"
slurmd -f "$SLURM_CONF" || fail "slurmd did not start (see $DIR/log/slurmd.log)"

for _ in $(seq 1 60); do              # idle within a second or two; give up after 30 s
    state=$(sinfo -h -N -o %t 2>/dev/null | head -1 || true)
    [ "$state" = idle ] && { echo "export SLURM_CONF=$SLURM_CONF"; exit 0; }
    sleep 0.5
done
fail "the node is '${state:-unknown}', not idle, 30 s after start (see $DIR/log/slurmctld.log and slurmd.log)"
