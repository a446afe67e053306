#!/bin/sh
# Run the tcptrace image as the docs say (only CAP_BPF and CAP_PERFMON, no --privileged),
# then make a connection inside another container and check the agent labels it with
# that container's id. Called by `cargo xtask image --verify` inside a private mount
# namespace: on a cgroup v1/v2 hybrid host, crun refuses to run while the v2 hierarchy
# holds a controller, so the controllers it holds are mounted as v1 hierarchies here,
# and return to v2 when this namespace ends.
# Arguments: agent image, client image, metrics port.
set -eu
AGENT_IMAGE=$1 CLIENT_IMAGE=$2 PORT=$3
AGENT=tcptrace-verify-agent-$$
if [ -f /sys/fs/cgroup/unified/cgroup.controllers ]; then
    for c in $(cat /sys/fs/cgroup/unified/cgroup.controllers); do
        mkdir -p "/tmp/tcptrace-v1-$c-$$"
        mount -t cgroup -o "$c" none "/tmp/tcptrace-v1-$c-$$"
    done
fi
cleanup() {
    podman rm -f "$AGENT" >/dev/null 2>&1 || true
    [ -n "${CLIENT:-}" ] && podman rm -f "$CLIENT" >/dev/null 2>&1 || true
}
trap cleanup EXIT

podman run -d --name "$AGENT" --network=host --pid=host \
    --cap-drop=all --cap-add=BPF,PERFMON --security-opt seccomp=unconfined \
    -v /sys/kernel/tracing:/sys/kernel/tracing:ro \
    -v /sys/fs/cgroup:/sys/fs/cgroup:ro,rslave \
    "$AGENT_IMAGE" run --listen "127.0.0.1:$PORT" --labels workload >/dev/null
tries=0
until curl -sf -o /dev/null "http://127.0.0.1:$PORT/readyz"; do
    tries=$((tries + 1))
    if [ $tries -gt 100 ]; then
        echo "image-verify: agent not ready"; podman logs "$AGENT"; exit 1
    fi
    sleep 0.2
done
pid=$(podman inspect -f '{{.State.Pid}}' "$AGENT")
echo "image-verify: agent capabilities: $(grep -E '^Cap(Eff|Prm|Bnd)' /proc/$pid/status | tr '\n\t' '  ')"
grep -q '^CapEff:.*0000000000000000$' "/proc/$pid/status" || { echo "image-verify: capabilities left after start"; exit 1; }
grep -q '^CapBnd:.*000000c000000000$' "/proc/$pid/status" || { echo "image-verify: bounding set is not BPF+PERFMON"; exit 1; }

# A connection refused inside another container.
CLIENT=$(podman run -d --network=host "$CLIENT_IMAGE" sh -c "nc 127.0.0.1 7 </dev/null; sleep 1")
short=$(printf '%.12s' "$CLIENT")
tries=0
until curl -s "http://127.0.0.1:$PORT/metrics" | grep -q "container=\"podman:$short\".*reason=\"refused\"} 1"; do
    tries=$((tries + 1))
    if [ $tries -gt 50 ]; then
        echo "image-verify: no series for container $short"
        curl -s "http://127.0.0.1:$PORT/metrics" | grep workload_connect_failures || true
        exit 1
    fi
    sleep 0.2
done
curl -s "http://127.0.0.1:$PORT/metrics" | grep "container=\"podman:$short\""
echo "image-verify: the agent image labelled container $short: PASS"
