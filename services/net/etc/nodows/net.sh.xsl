<?xml version="1.0" encoding="utf-8"?>
<!-- /etc/nodows/net.sh: brings up loopback and one statically configured
     interface; safe to run again (it replaces the address and route).
     Every model value is written as one shell word (nodows:sh-quote). -->
<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform" xmlns:nodows="urn:nodows">
  <xsl:output method="text" encoding="utf-8"/>
  <xsl:param name="server"/>
  <xsl:param name="mode"/>
  <xsl:param name="service"/>
  <xsl:param name="self"/>
  <xsl:variable name="interface" select="nodows:sh-quote($self/key[@name = 'interface'])"/>
  <xsl:variable name="address" select="nodows:sh-quote($self/key[@name = 'address'])"/>
  <xsl:template match="/">
    <xsl:text>#!/bin/sh
# rendered by nodows from the model (service </xsl:text>
    <xsl:value-of select="$service"/>
    <xsl:text>); do not edit
set -e
interface=</xsl:text>
    <xsl:value-of select="$interface"/>
    <xsl:text>
address=</xsl:text>
    <xsl:value-of select="$address"/>
    <xsl:text>
# The driver may still be registering the interface: wait up to 5 s.
i=0
while [ ! -e "/sys/class/net/$interface" ] &amp;&amp; [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
/sbin/ip link set lo up
/sbin/ip link set "$interface" up
/sbin/ip address flush dev "$interface" scope global
/sbin/ip address add "$address" dev "$interface"
</xsl:text>
    <xsl:if test="$self/key[@name = 'gateway'] != ''">
      <xsl:text>/sbin/ip route replace default via </xsl:text>
      <xsl:value-of select="nodows:sh-quote($self/key[@name = 'gateway'])"/>
      <xsl:text> dev "$interface"&#10;</xsl:text>
    </xsl:if>
    <xsl:text>echo "nodows: net $interface $address"
</xsl:text>
  </xsl:template>
</xsl:stylesheet>
