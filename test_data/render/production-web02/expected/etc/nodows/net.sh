#!/bin/sh
# rendered by nodows from the model (service net, mode production); do not edit
set -e
# The driver may still be registering the interface: wait up to 5 s.
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
/sbin/ip link set lo up
/sbin/ip link set eth0 up
/sbin/ip address flush dev eth0 scope global
/sbin/ip address add 10.0.2.15/24 dev eth0
/sbin/ip route replace default via 10.0.2.2 dev eth0
echo "nodows: net eth0 10.0.2.15/24"
