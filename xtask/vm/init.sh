#!/bin/sh
# PID 1 of the direct lane: mounts what egressd and the tests expect, then
# runs the tests (run-tests powers the VM off when it is done).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t securityfs securityfs /sys/kernel/security 2>/dev/null
hostname egressd-vm
ip link set lo up
/egressd-vm/run-tests direct
# run-tests powers off; if it could not:
echo "egressd-vm: run-tests returned; powering off"
echo o > /proc/sysrq-trigger
sleep 60
