<?xml version="1.0" encoding="utf-8"?>
<!-- /etc/nodows/net.sh: brings up loopback and one statically configured
     interface; safe to run again (it replaces the address and route). -->
<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
  <xsl:output method="text" encoding="utf-8"/>
  <xsl:param name="server"/>
  <xsl:param name="mode"/>
  <xsl:param name="service"/>
  <xsl:param name="self"/>
  <xsl:variable name="net" select="$self"/>
  <xsl:variable name="interface" select="$net/key[@name = 'interface']"/>
  <xsl:template match="/">
    <xsl:if test="not($net/key[@name = 'address']) or not($interface)">
      <xsl:message terminate="yes">service net needs the keys interface and address in the model</xsl:message>
    </xsl:if>
    <xsl:text>#!/bin/sh
# rendered by nodows from the model (service </xsl:text>
    <xsl:value-of select="$service"/>
    <xsl:text>, mode </xsl:text>
    <xsl:value-of select="$mode"/>
    <xsl:text>); do not edit
set -e
# The driver may still be registering the interface: wait up to 5 s.
i=0
while [ ! -e /sys/class/net/</xsl:text>
    <xsl:value-of select="$interface"/>
    <xsl:text> ] &amp;&amp; [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
/sbin/ip link set lo up
/sbin/ip link set </xsl:text>
    <xsl:value-of select="$interface"/>
    <xsl:text> up
/sbin/ip address flush dev </xsl:text>
    <xsl:value-of select="$interface"/>
    <xsl:text> scope global
/sbin/ip address add </xsl:text>
    <xsl:value-of select="$net/key[@name = 'address']"/>
    <xsl:text> dev </xsl:text>
    <xsl:value-of select="$interface"/>
    <xsl:text>&#10;</xsl:text>
    <xsl:if test="$net/key[@name = 'gateway'] != ''">
      <xsl:text>/sbin/ip route replace default via </xsl:text>
      <xsl:value-of select="$net/key[@name = 'gateway']"/>
      <xsl:text> dev </xsl:text>
      <xsl:value-of select="$interface"/>
      <xsl:text>&#10;</xsl:text>
    </xsl:if>
    <xsl:text>echo "nodows: net </xsl:text>
    <xsl:value-of select="$interface"/>
    <xsl:text> </xsl:text>
    <xsl:value-of select="$net/key[@name = 'address']"/>
    <xsl:text>"
</xsl:text>
  </xsl:template>
</xsl:stylesheet>
