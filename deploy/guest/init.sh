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
# Optional NIC set-up from the kernel command line (absent: the NIC stays down, as before):
# vmhop.ip6=ADDR (a /128, everything via fe80::1), vmhop.ip4=ADDR/LEN, vmhop.gw4=ADDR;
# vmhop.echo=PORT adds a TCP echo server (a correspondent's stream that must survive a move).
for kv in $(cat /proc/cmdline); do
  case "$kv" in
    vmhop.ip6=*) ip6=${kv#*=} ;;
    vmhop.ip4=*) ip4=${kv#*=} ;;
    vmhop.gw4=*) gw4=${kv#*=} ;;
    vmhop.echo=*) echo_port=${kv#*=} ;;
  esac
done
if [ -n "$ip6$ip4" ]; then
  echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad
  echo 0 > /proc/sys/net/ipv6/conf/eth0/accept_dad
  ip link set eth0 up
  [ -n "$ip6" ] && ip -6 addr add "$ip6/128" dev eth0 && ip -6 route add default via fe80::1 dev eth0
  [ -n "$ip4" ] && ip addr add "$ip4" dev eth0
  [ -n "$gw4" ] && ip route add default via "$gw4" dev eth0
  echo "vmhop-init: eth0 configured"
  if [ -n "$echo_port" ]; then
    nc -ll -p "$echo_port" -e /bin/cat &
    echo "vmhop-init: echo server on port $echo_port"
  fi
fi
if grep -q 'vmhop.shell=1' /proc/cmdline; then
  exec sh
fi
/bin/vmhop-workload
echo "vmhop-init: workload exited with $?"
poweroff -f
