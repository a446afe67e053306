#!/bin/sh
# Run the tcptrace image as deploy/tcptrace.yaml runs it: uid 0, only CAP_BPF and
# CAP_PERFMON, deploy/seccomp-tcptrace.json, the host's network but a PID namespace of its
# own, read-only root, no new privileges, the host's tracefs and cgroup hierarchy
# read-only, listening on the host's IP. It must attach, serve, and label a connection
# made in another container with that container's id. Then each privilege is taken away
# in turn, and the agent must fail and say why.
# Called by `cargo xtask image --verify` inside a private mount namespace: on a cgroup
# v1/v2 hybrid host, crun refuses to run while the v2 hierarchy holds a controller, so
# the controllers it holds are mounted as v1 hierarchies here, and return to v2 when this
# namespace ends.
# Arguments: agent image, client image, port, seccomp profile, the same profile without
# bpf, and without perf_event_open.
set -eu
AGENT_IMAGE=$1 CLIENT_IMAGE=$2 PORT=$3 PROFILE=$4 PROFILE_NO_BPF=$5 PROFILE_NO_PERF=$6
# Every container of this run is named $RUN-*, and removed on exit, passed or failed.
RUN=tcptrace-verify-$$
NAME=image-verify
. "$(dirname "$0")/podman-host.sh"
trap podman_host_cleanup EXIT

# The DaemonSet's settings (deploy/tcptrace.yaml), one variable per privilege.
NETWORK=--network=host                                       # hostNetwork: true
CAPS="--cap-drop=all --cap-add=BPF,PERFMON"                   # capabilities
SECCOMP="--security-opt=seccomp=$PROFILE"                     # seccompProfile: Localhost
USER=--user=0                                                 # runAsUser: 0
TRACEFS=--volume=/sys/kernel/tracing:/sys/kernel/tracing:ro         # the tracefs volume
CGROUP=--volume=/sys/fs/cgroup:/sys/fs/cgroup:ro,rslave             # the cgroup volume
# readOnlyRootFilesystem, allowPrivilegeEscalation: false.
FIXED="--read-only --security-opt=no-new-privileges"
settings() { echo "$NETWORK $CAPS $SECCOMP $USER $TRACEFS $CGROUP $FIXED"; }

metrics() { curl -s "http://$HOST_IP:$PORT/metrics"; }

# Start the agent with the current settings, named $RUN-$1, and wait until it is ready.
start_agent() {
    # shellcheck disable=SC2046 # the settings are words on purpose
    podman run -d --name "$RUN-$1" $(settings) "$AGENT_IMAGE" \
        run --listen "[$HOST_IP]:$PORT" --labels workload,remote >/dev/null
    tries=0
    until curl -sf -o /dev/null "http://$HOST_IP:$PORT/readyz"; do
        tries=$((tries + 1))
        if [ $tries -gt 100 ]; then
            echo "image-verify: agent $1 not ready"; podman logs "$RUN-$1"; exit 1
        fi
        sleep 0.2
    done
}

# Connections are refused at an address of this run's own (all of 127/8 is loopback),
# so that its series is not mixed with what other tests on the host do.
TARGET=127.$(($$ >> 16 & 255)).$(($$ >> 8 & 255)).$(($$ & 255))
# Make a connection refused inside another container; print its short id.
refused_connection() {
    id=$(podman run -d --name "$RUN-client-$1" --network=host "$CLIENT_IMAGE" \
        sh -c "nc $TARGET 7 </dev/null; sleep 1")
    printf '%.12s' "$id"
}

# Wait until the metrics have a series containing $1.
wait_for_series() {
    tries=0
    until metrics | grep -qF -- "$1"; do
        tries=$((tries + 1))
        if [ $tries -gt 50 ]; then
            echo "image-verify: no series with $1"
            metrics | grep workload_connect_failures || true
            exit 1
        fi
        sleep 0.2
    done
}

# The agent with one setting changed (in the caller's subshell) must exit with an error
# that contains $2; $1 names the run.
must_fail() {
    name=$RUN-without-$(printf '%s' "$1" | tr -c 'a-zA-Z0-9' '-')
    # shellcheck disable=SC2046
    if out=$(timeout 60 podman run --name "$name" $(settings) "$AGENT_IMAGE" \
        run --listen "[$HOST_IP]:$PORT" 2>&1); then
        echo "image-verify: without $1 the agent ran:"; echo "$out"; exit 1
    fi
    if ! echo "$out" | grep -qF -- "$2"; then
        echo "image-verify: without $1 the agent failed, but not saying \"$2\":"; echo "$out"
        exit 1
    fi
    echo "image-verify: without $1: $(echo "$out" | tail -n 1)"
}

# 1. As the DaemonSet runs it.
start_agent agent
pid=$(podman inspect -f '{{.State.Pid}}' "$RUN-agent")
echo "image-verify: agent $(grep -E '^(Cap(Eff|Prm|Bnd)|Seccomp):' /proc/$pid/status | tr '\n\t' '  ')"
grep -q '^CapEff:.*0000000000000000$' "/proc/$pid/status" || { echo "image-verify: capabilities left after start"; exit 1; }
grep -q '^CapBnd:.*000000c000000000$' "/proc/$pid/status" || { echo "image-verify: bounding set is not BPF+PERFMON"; exit 1; }
grep -q '^Seccomp:.*2$' "/proc/$pid/status" || { echo "image-verify: no seccomp filter"; exit 1; }
# Kernel types come from the container's own /sys (no /sys/kernel/btf volume).
podman logs "$RUN-agent" 2>&1 | grep -F "BTF: sock.sk_err at" || { echo "image-verify: no kernel BTF"; exit 1; }
# No hostPID: the agent sees its own PID namespace, not the host's.
[ "$(readlink /proc/$pid/ns/pid)" != "$(readlink /proc/self/ns/pid)" ] || { echo "image-verify: agent in the host PID namespace"; exit 1; }
echo "image-verify: agent in PID namespace $(readlink /proc/$pid/ns/pid), the host's is $(readlink /proc/self/ns/pid)"
short=$(refused_connection labelled)
wait_for_series "container=\"podman:$short\",workload=\"\",remote=\"$TARGET:7\",reason=\"refused\"} 1"
metrics | grep "container=\"podman:$short\""
echo "image-verify: the agent image labelled container $short: PASS"
podman rm -f "$RUN-agent" >/dev/null

# 2. Without the cgroup volume the agent runs, but cannot tell whose a connection is: it
# says so when it starts, and the connection is counted as "unresolved".
(
    CGROUP=
    start_agent without-the-cgroup-volume
    podman logs "$RUN-without-the-cgroup-volume" 2>&1 | grep -F "no cgroup2 hierarchy at /sys/fs/cgroup" ||
        { echo "image-verify: no warning without the cgroup volume"; exit 1; }
    short=$(refused_connection unresolved)
    wait_for_series "container=\"unresolved\",workload=\"\",remote=\"$TARGET:7\",reason=\"refused\"} 1"
    if metrics | grep -F "podman:$short"; then
        echo "image-verify: container $short attributed without the cgroup volume"; exit 1
    fi
    echo "image-verify: without the cgroup volume: container $short counted as unresolved"
    podman rm -f "$RUN-without-the-cgroup-volume" >/dev/null
)

# 3. Without each other privilege the agent does not start.
( SECCOMP=; must_fail "the seccomp profile (podman's default)" \
    "tcptrace: bpf() and perf_event_open() refused although the capabilities are held (bpf: Operation not permitted (os error 1); perf_event_open: Operation not permitted (os error 1)): stopped by a seccomp filter" )
( SECCOMP=--security-opt=seccomp=$PROFILE_NO_BPF; must_fail "bpf in the seccomp profile" \
    "tcptrace: bpf() refused although the capabilities are held (bpf: Function not implemented (os error 38)): stopped by a seccomp filter" )
( SECCOMP=--security-opt=seccomp=$PROFILE_NO_PERF; must_fail "perf_event_open in the seccomp profile" \
    "tcptrace: perf_event_open() refused although the capabilities are held (perf_event_open: Function not implemented (os error 38)): stopped by a seccomp filter" )
( CAPS="--cap-drop=all --cap-add=PERFMON"; must_fail CAP_BPF "tcptrace: missing capability CAP_BPF:" )
( CAPS="--cap-drop=all --cap-add=BPF"; must_fail CAP_PERFMON "tcptrace: missing capability CAP_PERFMON:" )
( TRACEFS=; must_fail "the tracefs volume" "tracefs is not mounted and mounting it at /sys/kernel/tracing failed" )
( USER=--user=65534; must_fail "uid 0" "cannot read /sys/kernel/tracing: Permission denied (os error 13). tracefs belongs to root" )
( NETWORK=--network=none; must_fail "the host network" "cannot listen on $HOST_IP:$PORT" )
echo "image-verify: every privilege is needed: PASS"
