#!/usr/bin/env bash
# Start a Flower SuperLink and N SuperNodes on this machine (loopback, no TLS), each
# SuperNode holding one partition of the experiment, then leave them running.
#
#   experiments/deploy/launch.sh N [FLWR_HOME]      # N = data.num_clients of the experiment
#   FLWR_HOME=... flwr run . deploy --run-config "data.num_clients=N ..." --stream
#   experiments/deploy/launch.sh stop [FLWR_HOME]
#
# Logs and pids go to FLWR_HOME (default: ./.flwr-deploy). Ports: SuperLink 9093,
# SuperNodes 9100.. (override with SUPERLINK_PORT / SUPERNODE_PORT0).
set -euo pipefail

home=${2:-${FLWR_HOME:-$PWD/.flwr-deploy}}
mkdir -p "$home"
export FLWR_HOME=$home FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1

if [ "${1:-}" = stop ]; then
    [ -f "$home/pids" ] && xargs -r kill <"$home/pids" 2>/dev/null || true
    # The SuperLink's and SuperNodes' helpers run in sessions of their own; every one of
    # them inherited this FLWR_HOME, so find them by it.
    for env in /proc/[0-9]*/environ; do
        if { tr '\0' '\n' <"$env"; } 2>/dev/null | grep -qx "FLWR_HOME=$home"; then
            pid=${env#/proc/}; kill "${pid%/environ}" 2>/dev/null || true
        fi
    done
    rm -f "$home/pids"
    echo "stopped"
    exit 0
fi

n=${1:?usage: launch.sh N [FLWR_HOME] | launch.sh stop [FLWR_HOME]}
link_port=${SUPERLINK_PORT:-9093}
node_port0=${SUPERNODE_PORT0:-9100}

cat >"$home/config.toml" <<TOML
[superlink]
default = "deploy"

[superlink.deploy]
address = "127.0.0.1:$link_port"
insecure = true
TOML

flower-superlink --insecure --host 127.0.0.1 --port "$link_port" \
    --disable-runtime-dependency-installation >"$home/superlink.log" 2>&1 &
echo $! >"$home/pids"
sleep 3
for ((i = 0; i < n; i++)); do
    flower-supernode --insecure --superlink "127.0.0.1:$link_port" \
        --node-config "partition-id=$i num-partitions=$n" \
        --host 127.0.0.1 --port $((node_port0 + i)) >"$home/supernode-$i.log" 2>&1 &
    echo $! >>"$home/pids"
done
echo "SuperLink on 127.0.0.1:$link_port, $n SuperNodes; logs in $home"
echo "run:  FLWR_HOME=$home flwr run . deploy --run-config \"data.num_clients=$n\" --stream"
echo "stop: $0 stop $home"
