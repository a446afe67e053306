#!/bin/sh
# A node simulated with containers: the tcptrace image run as deploy/tcptrace.yaml runs
# it (see image-verify.sh), next to three "pods" — podman containers, each in its own
# network namespace, each serving HTTP on the same port 8080 and fetching from the two
# others — and one hostile container that holds hundreds of sockets, sends scrapes it
# never reads, trickles request heads and floods the agent's port with connections.
# Checks: every pod's handshakes are counted for that pod, on both sides, exactly; the
# health port answers within a second throughout; a full scrape succeeds at the end.
# Called by `cargo xtask node-sim` inside a private mount namespace (see image-verify.sh
# for why). Arguments: agent image, pod image, metrics port, health port, seccomp
# profile.
set -eu
AGENT_IMAGE=$1 POD_IMAGE=$2 PORT=$3 HEALTH=$4 PROFILE=$5
RUN=tcptrace-node-$$
NAME=node-sim
. "$(dirname "$0")/podman-host.sh"
cleanup() {
    [ -n "${POLLER:-}" ] && kill "$POLLER" 2>/dev/null || true
    podman_host_cleanup
    rm -f "/tmp/$RUN-health"
}
trap cleanup EXIT
fail() { echo "node-sim: $*"; podman logs --tail 20 "$RUN-agent" 2>&1 || true; exit 1; }

# 1. The agent, with the DaemonSet's settings.
podman run -d --name "$RUN-agent" --network=host --cap-drop=all --cap-add=BPF,PERFMON \
    --security-opt="seccomp=$PROFILE" --user=0 --read-only --security-opt=no-new-privileges \
    --volume=/sys/kernel/tracing:/sys/kernel/tracing:ro \
    --volume=/sys/fs/cgroup:/sys/fs/cgroup:ro,rslave \
    "$AGENT_IMAGE" run --listen "[$HOST_IP]:$PORT" --health-listen "[$HOST_IP]:$HEALTH" \
    --labels workload >/dev/null
metrics() { curl -sf -m 10 "http://$HOST_IP:$PORT/metrics"; }
tries=0
until curl -sf -o /dev/null "http://$HOST_IP:$HEALTH/readyz"; do
    tries=$((tries + 1)); [ $tries -le 150 ] || fail "agent not ready"; sleep 0.2
done

# 2. The pods: each serves a file on :8080 in its own network namespace.
for p in 0 1 2; do
    podman run -d --name "$RUN-pod$p" "$POD_IMAGE" sh -c \
        'mkdir /www && echo hello > /www/f && exec httpd -f -p 8080 -h /www' >/dev/null
done
ip_of() { podman inspect -f '{{.NetworkSettings.IPAddress}}' "$RUN-$1"; }
id_of() { podman inspect -f '{{.Id}}' "$RUN-$1" | cut -c1-12; }

# 3. The hostile container: 300 sockets held open to its own server, 64 scrapes sent and
# never read, 16 request heads trickled, and a flood of connections to the agent.
podman run -d --name "$RUN-hostile" "$POD_IMAGE" sh -c "
    mkdir /www && exec httpd -f -p 8080 -h /www & sleep 1
    for i in \$(seq 300); do sleep 600 | nc 127.0.0.1 8080 & done
    for i in \$(seq 64); do
        (printf 'GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n'; sleep 600) | nc $HOST_IP $PORT | sleep 600 &
    done
    for i in \$(seq 16); do (printf 'GET /me'; sleep 600) | nc $HOST_IP $PORT & done
    for i in 1 2 3 4; do while :; do nc $HOST_IP $PORT </dev/null; done & done
    wait" >/dev/null

# 4. Probes throughout: the health port polled every 200 ms, each answer within 1 s.
(
    while :; do
        if curl -sf -m 1 -o /dev/null "http://$HOST_IP:$HEALTH/healthz"; then
            echo ok; else echo FAILED; fi
        sleep 0.2
    done
) >"/tmp/$RUN-health" &
POLLER=$!

# 5. Pod traffic: each pod fetches the file 20 times from each of the two others.
FETCHES=20
for p in 0 1 2; do
    peers=""
    for q in 0 1 2; do [ $q = $p ] || peers="$peers $(ip_of pod$q)"; done
    podman exec "$RUN-pod$p" /bin/busybox sh -c "
        for peer in $peers; do
            for i in \$(seq $FETCHES); do wget -q -O /dev/null http://\$peer:8080/f || exit 1; done
        done" || fail "pod$p could not fetch from its peers"
done

# 6. Each pod's handshakes are its own: 40 accepted by its listener, 40 made by its
# client, the same port in every pod and the hostile one beside them.
series() { echo "tcptrace_workload_handshake_duration_seconds_count{namespace=\"\",pod=\"\",container=\"podman:$1\",workload=\"\",side=\"$2\"} $3"; }
for p in 0 1 2; do
    id=$(id_of pod$p)
    for side in server client; do
        want=$(series "$id" $side $((2 * FETCHES)))
        tries=0
        until metrics | grep -qxF -- "$want"; do
            tries=$((tries + 1))
            if [ $tries -gt 50 ]; then
                metrics | grep -F "podman:$id" || true
                fail "pod$p ($id): no series $want"
            fi
            sleep 0.2
        done
    done
    echo "node-sim: pod$p ($id): $((2 * FETCHES)) server and $((2 * FETCHES)) client handshakes, its own"
done
hostile=$(id_of hostile)
metrics | grep -qF "container=\"podman:$hostile\",workload=\"\",side=\"server\"" ||
    fail "the hostile container's own connections are not counted for it"

# 7. The probes never failed over at least 10 s of the attack, and a full scrape still
# works with the hostile one at it.
until [ "$(wc -l <"/tmp/$RUN-health")" -ge 50 ]; do sleep 0.2; done
podman inspect -f '{{.State.Running}}' "$RUN-hostile" | grep -q true || fail "the hostile container stopped"
kill "$POLLER"; POLLER=
polls=$(wc -l <"/tmp/$RUN-health")
failed=$(grep -c FAILED "/tmp/$RUN-health" || true)
[ "$failed" -eq 0 ] || fail "$failed of $polls health polls failed or took over 1 s"
bytes=$(metrics | wc -c)
[ "$bytes" -gt 1000 ] || fail "the scrape after the attack returned $bytes bytes"
podman inspect -f '{{.State.Running}}' "$RUN-agent" | grep -q true || fail "the agent is not running"
echo "node-sim: $polls health polls all answered within 1 s, the last scrape $bytes bytes: PASS"
