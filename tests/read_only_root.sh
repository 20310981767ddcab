#!/bin/sh
# Ray on a read-only root filesystem, as the KubeRay pods run it (tests/test_cluster_configs.py). Run as
#   unshare -m -n -p --fork --mount-proc sh tests/read_only_root.sh SPEC WRITABLE...
# In this mount namespace only, every mount but /proc, /sys and /dev is made read-only and each WRITABLE
# folder gets an empty tmpfs (the pods' emptyDirs); the network namespace has loopback only (Ray's default
# ports are free there) and every process ends with the PID namespace. Starts a Ray head with token auth,
# submits jobs/score.py SPEC (this checkout's, on PYTHONPATH), prints each of Ray's log lines about a
# read-only file system, and exits with the job's status.
set -u
spec=$1
shift
ip link set lo up
mount --make-rprivate /
awk '{print $5}' /proc/self/mountinfo | grep -v -E "^/(proc|sys|dev)(/|$)" | sort -u | while read -r m; do
    mount -o remount,bind,ro "$m" 2>/dev/null
done
for folder in "$@"; do
    mkdir -p "$folder" 2>/dev/null; mount -t tmpfs tmpfs "$folder" || exit 3
done
if touch "$PYTHONPATH/.read-only-probe" 2>/dev/null; then echo "the checkout is writable: no check"; exit 3; fi
echo "read-only but for: $*"
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN="$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')" RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
ray start --head --block --node-ip-address=127.0.0.1 --dashboard-host=127.0.0.1 --num-cpus=2 --disable-usage-stats \
    > /tmp/head.log 2>&1 &
for _ in $(seq 180); do grep -q "Ray runtime started" /tmp/head.log && break; sleep 1; done
grep -q "Ray runtime started" /tmp/head.log || { echo "the head did not start:"; tail -30 /tmp/head.log; exit 3; }
ray job submit --address http://127.0.0.1:8265 -- python "$PYTHONPATH/jobs/score.py" "$spec"
status=$?
grep -rh "Read-only file system" /tmp/ray/session_latest/logs /tmp/head.log
exit $status
