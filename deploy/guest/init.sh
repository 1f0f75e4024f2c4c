#!/bin/busybox sh
# /init of the vmhop test guest: mount the basics, load the virtio drivers (modules in
# Debian's kernel), run the workload on the console, power off when it ends.
/bin/busybox mkdir -p /proc /sys /dev /tmp /bin /sbin /usr/bin /usr/sbin
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox --install -s
# The builder writes the module list, in load order, to /etc/vmhop-modules.
for m in $(cat /etc/vmhop-modules); do
  insmod "/lib/modules/$m.ko" || echo "vmhop-init: insmod $m failed"
done
echo "vmhop-init: modules loaded"
if grep -q 'vmhop.shell=1' /proc/cmdline; then
  exec sh
fi
/bin/vmhop-workload
echo "vmhop-init: workload exited with $?"
poweroff -f
