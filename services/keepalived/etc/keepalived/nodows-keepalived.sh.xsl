<?xml version="1.0" encoding="utf-8"?>
<!-- /etc/keepalived/nodows-keepalived.sh: puts this node's address on the
     VRRP link (keys interface and address), then runs keepalived in the
     foreground under initd (VRRP only, logs on its stdout: initd's log).
     keepalived.conf.xsl checks the keys; every model value is written as
     one shell word (nodows:sh-quote). -->
<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform" xmlns:nodows="urn:nodows">
  <xsl:output method="text" encoding="utf-8"/>
  <xsl:param name="server"/>
  <xsl:param name="mode"/>
  <xsl:param name="service"/>
  <xsl:param name="self"/>
  <xsl:template match="/">
    <xsl:variable name="interface" select="nodows:sh-quote($self/key[@name = 'interface'])"/>
    <xsl:text>#!/bin/sh
# rendered by nodows from the model (service </xsl:text>
    <xsl:value-of select="$service"/>
    <xsl:text>); do not edit
# The driver may still be registering the interface: wait up to 5 s.
i=0
while [ ! -e /sys/class/net/</xsl:text>
    <xsl:value-of select="$interface"/>
    <xsl:text> ] &amp;&amp; [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
if [ ! -e /sys/class/net/</xsl:text>
    <xsl:value-of select="$interface"/>
    <xsl:text> ]; then
    echo "keepalived: no interface" </xsl:text>
    <xsl:value-of select="$interface"/>
    <xsl:text> ": a failover node needs its VRRP link (model: service keepalived, key interface)" >&amp;2
    exit 1
fi
set -e
/sbin/ip link set </xsl:text>
    <xsl:value-of select="$interface"/>
    <xsl:text> up
/sbin/ip address replace </xsl:text>
    <xsl:value-of select="nodows:sh-quote($self/key[@name = 'address'])"/>
    <xsl:text> dev </xsl:text>
    <xsl:value-of select="$interface"/>
    <xsl:text>
exec /usr/sbin/keepalived --dont-fork --log-console --no-syslog --vrrp \
    --use-file /etc/keepalived/keepalived.conf \
    --pid /run/keepalived.pid --vrrp_pid /run/keepalived_vrrp.pid
</xsl:text>
  </xsl:template>
</xsl:stylesheet>
