<?xml version="1.0" encoding="utf-8"?>
<!-- /etc/rc.conf of the FreeBSD image for the profile: rc(8) brings up
     the base system and the network, then rc.d/nodows starts initd, which
     runs the services (sshd too, through the ssh service). rc.conf is
     shell: every value is one single-quoted word (nodows:sh-quote). -->
<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform" xmlns:nodows="urn:nodows">
  <xsl:output method="text" encoding="utf-8"/>
  <xsl:param name="server"/>
  <xsl:param name="mode"/>
  <xsl:param name="service"/>
  <xsl:param name="self"/>
  <xsl:variable name="rc" select="$self"/>
  <xsl:variable name="hostname">
    <xsl:choose>
      <xsl:when test="$rc/key[@name = 'hostname']">
        <xsl:value-of select="$rc/key[@name = 'hostname']"/>
      </xsl:when>
      <xsl:when test="$server != ''">
        <xsl:value-of select="$server"/>
      </xsl:when>
      <xsl:otherwise>nodows</xsl:otherwise>
    </xsl:choose>
  </xsl:variable>
  <xsl:variable name="ifconfig">
    <xsl:choose>
      <xsl:when test="$rc/key[@name = 'ifconfig']">
        <xsl:value-of select="$rc/key[@name = 'ifconfig']"/>
      </xsl:when>
      <xsl:otherwise>SYNCDHCP</xsl:otherwise>
    </xsl:choose>
  </xsl:variable>
  <xsl:template match="/">
    <xsl:text># rendered by nodows from the model (service </xsl:text>
    <xsl:value-of select="$service"/>
    <xsl:text>, mode </xsl:text>
    <xsl:value-of select="$mode"/>
    <xsl:text>); do not edit
hostname=</xsl:text>
    <xsl:value-of select="nodows:sh-quote($hostname)"/>
    <xsl:text>
# rc(8) configures every interface before rc.d/nodows (REQUIRE: NETWORKING).
ifconfig_DEFAULT=</xsl:text>
    <xsl:value-of select="nodows:sh-quote($ifconfig)"/>
    <xsl:text>
# sshd runs under initd (the ssh service), not from rc.d/sshd.
sshd_enable="NO"
sendmail_enable="NONE"
dumpdev="NO"
nodows_enable="YES"
nodows_mode=</xsl:text>
    <xsl:value-of select="nodows:sh-quote($mode)"/>
    <xsl:text>
</xsl:text>
    <xsl:choose>
      <xsl:when test="$mode = 'dev' or $mode = 'test'">
        <xsl:text># </xsl:text>
        <xsl:value-of select="$mode"/>
        <xsl:text>: rc(8) says what it starts on the console.
rc_info="YES"
</xsl:text>
      </xsl:when>
      <xsl:otherwise>
        <xsl:text># </xsl:text>
        <xsl:value-of select="$mode"/>
        <xsl:text>: syslogd opens no network socket.
syslogd_flags="-ss"
</xsl:text>
      </xsl:otherwise>
    </xsl:choose>
  </xsl:template>
</xsl:stylesheet>
