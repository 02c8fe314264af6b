#!/bin/sh
# rendered by nodows from the model (service net, mode dev); do not edit
set -e
/sbin/ip link set lo up
/sbin/ip link set eth0 up
/sbin/ip address flush dev eth0 scope global
/sbin/ip address add 10.0.2.15/24 dev eth0
/sbin/ip route replace default via 10.0.2.2 dev eth0
echo "nodows: net eth0 10.0.2.15/24"
