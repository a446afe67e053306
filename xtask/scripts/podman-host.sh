# Sourced by image-verify.sh and node-sim.sh, after they set RUN (every container of a
# run is named $RUN-*) and NAME (for messages): what both need of the host before
# starting containers, and the cleanup of it.
#
# HOST_IP: the address the agent's ports bind to, as a DaemonSet binds $(HOST_IP).
HOST_IP=$(hostname -I | cut -d' ' -f1)
[ -n "$HOST_IP" ] || { echo "$NAME: this host has no address but loopback"; exit 1; }
# On a hybrid cgroup host, podman needs the controllers of the unified hierarchy
# mounted as v1 hierarchies too; the mounts end with this mount namespace.
if [ -f /sys/fs/cgroup/unified/cgroup.controllers ]; then
    for c in $(cat /sys/fs/cgroup/unified/cgroup.controllers); do
        mkdir -p "/tmp/tcptrace-v1-$c-$$"
        mount -t cgroup -o "$c" none "/tmp/tcptrace-v1-$c-$$"
    done
fi

# Remove this run's containers and the v1 mount points, passed or failed.
podman_host_cleanup() {
    podman ps -aq --filter "name=^$RUN-" | xargs -r podman rm -f -t 0 >/dev/null 2>&1 || true
    for d in /tmp/tcptrace-v1-*-$$; do
        umount "$d" 2>/dev/null || true
        rmdir "$d" 2>/dev/null || true
    done
}
