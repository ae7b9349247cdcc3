#!/usr/bin/env bash
# Stop the single-node SLURM that tests/slurm/start.sh started in DIR: only the PIDs it recorded there
# (slurmd, slurmctld, munged, in that order), never daemons found by name. Jobs still running on it are
# cancelled first (their processes belong to slurmstepd, which outlives slurmd).
set -uo pipefail
DIR=${1:?usage: stop.sh DIR}
if [ -s "$DIR/slurmctld.pid" ] && kill -0 "$(cat "$DIR/slurmctld.pid")" 2>/dev/null; then
    export SLURM_CONF="$DIR/slurm.conf"
    scancel --partition=debug 2>/dev/null
    for _ in $(seq 1 150); do
        [ -z "$(squeue -h -t PENDING,RUNNING,COMPLETING -o %i 2>/dev/null)" ] && break
        sleep 0.2
    done
fi
for name in slurmd slurmctld munge; do
    pidfile="$DIR/$name.pid"
    [ -s "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if kill "$pid" 2>/dev/null; then
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
    fi
    rm -f "$pidfile"
done
# The default-config link start.sh made, if it still points here.
[ "$(readlink /etc/slurm/slurm.conf 2>/dev/null)" = "$(cd "$DIR" 2>/dev/null && pwd)/slurm.conf" ] && rm -f /etc/slurm/slurm.conf
exit 0
