<?xml version="1.0" encoding="utf-8"?>
<!-- /etc/keepalived/keepalived.conf: the VRRP instances of a failover pair.
     Keys of service keepalived (README, "A failover pair"): interface and
     address (this node on the VRRP link), instances (names; per instance
     NAME.virtual_router_id and NAME.virtual_addresses), priority, advert_int
     (seconds, fractions with vrrp_version 3), vrrp_version, auth_pass (VRRPv2
     only), preempt (yes|no) and preempt_delay, unicast_peers (empty:
     multicast), track_service and check_interval/check_fall/check_rise.
     Refused with every problem at once: a virtual address outside the link's
     subnet, a router id used twice, malformed numbers or addresses. -->
<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform"
    xmlns:str="http://exslt.org/strings" exclude-result-prefixes="str">
  <xsl:output method="text" encoding="utf-8"/>
  <xsl:param name="server"/>
  <xsl:param name="mode"/>
  <xsl:param name="service"/>
  <xsl:param name="self"/>

  <xsl:variable name="interface" select="string($self/key[@name = 'interface'])"/>
  <xsl:variable name="address" select="string($self/key[@name = 'address'])"/>
  <xsl:variable name="version">
    <xsl:choose>
      <xsl:when test="$self/key[@name = 'vrrp_version'] != ''">
        <xsl:value-of select="$self/key[@name = 'vrrp_version']"/>
      </xsl:when>
      <xsl:otherwise>3</xsl:otherwise>
    </xsl:choose>
  </xsl:variable>
  <xsl:variable name="advert_int" select="string($self/key[@name = 'advert_int'])"/>
  <xsl:variable name="priority" select="string($self/key[@name = 'priority'])"/>
  <xsl:variable name="preempt" select="string($self/key[@name = 'preempt'])"/>
  <xsl:variable name="preempt_delay" select="string($self/key[@name = 'preempt_delay'])"/>
  <xsl:variable name="auth_pass" select="string($self/key[@name = 'auth_pass'])"/>
  <xsl:variable name="track" select="string($self/key[@name = 'track_service'])"/>
  <xsl:variable name="instances" select="str:tokenize($self/key[@name = 'instances'], ' &#9;&#10;')"/>
  <xsl:variable name="peers" select="str:tokenize($self/key[@name = 'unicast_peers'], ' &#9;&#10;')"/>
  <xsl:variable name="link-number">
    <xsl:call-template name="ip4"><xsl:with-param name="address" select="$address"/></xsl:call-template>
  </xsl:variable>
  <xsl:variable name="link-prefix" select="substring-after($address, '/')"/>
  <xsl:variable name="link-size">
    <xsl:call-template name="pow2"><xsl:with-param name="n" select="32 - $link-prefix"/></xsl:call-template>
  </xsl:variable>
  <xsl:variable name="link-network">
    <xsl:call-template name="dotted">
      <xsl:with-param name="number" select="floor($link-number div $link-size) * $link-size"/>
    </xsl:call-template>
    <xsl:value-of select="concat('/', $link-prefix)"/>
  </xsl:variable>

  <!-- The IPv4 address of "a.b.c.d" or "a.b.c.d/p" as a number; NaN if malformed. -->
  <xsl:template name="ip4">
    <xsl:param name="address"/>
    <xsl:variable name="ip" select="substring-before(concat($address, '/'), '/')"/>
    <xsl:variable name="octets" select="str:tokenize($ip, '.')"/>
    <xsl:choose>
      <xsl:when test="count($octets) = 4 and not(contains($ip, '..')) and not(starts-with($ip, '.'))
                      and substring($ip, string-length($ip)) != '.'
                      and not($octets[translate(., '0123456789', '') != '' or string-length(.) &gt; 3 or . &gt; 255])">
        <xsl:value-of select="$octets[1] * 16777216 + $octets[2] * 65536 + $octets[3] * 256 + $octets[4]"/>
      </xsl:when>
      <xsl:otherwise>NaN</xsl:otherwise>
    </xsl:choose>
  </xsl:template>

  <xsl:template name="dotted">
    <xsl:param name="number"/>
    <xsl:value-of select="concat(floor($number div 16777216) mod 256, '.', floor($number div 65536) mod 256, '.',
                                 floor($number div 256) mod 256, '.', $number mod 256)"/>
  </xsl:template>

  <xsl:template name="pow2">
    <xsl:param name="n"/>
    <xsl:param name="product" select="1"/>
    <xsl:choose>
      <xsl:when test="$n &gt; 0">
        <xsl:call-template name="pow2">
          <xsl:with-param name="n" select="$n - 1"/>
          <xsl:with-param name="product" select="$product * 2"/>
        </xsl:call-template>
      </xsl:when>
      <xsl:otherwise><xsl:value-of select="$product"/></xsl:otherwise>
    </xsl:choose>
  </xsl:template>

  <!-- "a.b.c.d/p" with p in 0..32 -->
  <xsl:template name="is-prefixed">
    <xsl:param name="address"/>
    <xsl:variable name="number">
      <xsl:call-template name="ip4"><xsl:with-param name="address" select="$address"/></xsl:call-template>
    </xsl:variable>
    <xsl:variable name="prefix" select="substring-after($address, '/')"/>
    <xsl:if test="string(number($number)) != 'NaN' and $prefix != '' and translate($prefix, '0123456789', '') = '' and $prefix &lt;= 32">yes</xsl:if>
  </xsl:template>

  <xsl:template name="is-integer">
    <xsl:param name="value"/>
    <xsl:param name="min"/>
    <xsl:param name="max"/>
    <xsl:if test="$value != '' and translate($value, '0123456789', '') = '' and $value &gt;= $min and $value &lt;= $max">yes</xsl:if>
  </xsl:template>

  <!-- Every problem of the model, one line each. -->
  <xsl:template name="problems">
    <xsl:variable name="address-ok">
      <xsl:call-template name="is-prefixed"><xsl:with-param name="address" select="$address"/></xsl:call-template>
    </xsl:variable>
    <xsl:if test="$interface = ''">
      <xsl:text>service keepalived: key interface is missing: name the network interface of the VRRP link (e.g. eth1)&#10;</xsl:text>
    </xsl:if>
    <xsl:if test="$address-ok != 'yes'">
      <xsl:value-of select="concat('service keepalived: key address is &quot;', $address, '&quot;: give the address of this node on the VRRP link with its prefix, e.g. 10.99.0.1/24 (per server)&#10;')"/>
    </xsl:if>
    <xsl:variable name="priority-ok">
      <xsl:call-template name="is-integer">
        <xsl:with-param name="value" select="$priority"/><xsl:with-param name="min" select="1"/><xsl:with-param name="max" select="254"/>
      </xsl:call-template>
    </xsl:variable>
    <xsl:if test="$priority-ok != 'yes'">
      <xsl:value-of select="concat('service keepalived: key priority is &quot;', $priority, '&quot;: give an integer from 1 to 254 (per server; the higher one wins the election)&#10;')"/>
    </xsl:if>
    <xsl:if test="$version != '2' and $version != '3'">
      <xsl:value-of select="concat('service keepalived: key vrrp_version is &quot;', $version, '&quot;: use 2 or 3&#10;')"/>
    </xsl:if>
    <xsl:choose>
      <xsl:when test="string(number($advert_int)) = 'NaN' or $advert_int &lt;= 0 or $advert_int &gt; 255">
        <xsl:value-of select="concat('service keepalived: key advert_int is &quot;', $advert_int, '&quot;: give the advertisement interval in seconds, e.g. 1 or 0.2&#10;')"/>
      </xsl:when>
      <xsl:when test="$version = '2' and (floor($advert_int) != $advert_int)">
        <xsl:value-of select="concat('service keepalived: key advert_int is ', $advert_int, ' with vrrp_version 2, which has whole seconds only: use vrrp_version 3 or a whole number&#10;')"/>
      </xsl:when>
    </xsl:choose>
    <xsl:if test="$auth_pass != '' and $version != '2'">
      <xsl:text>service keepalived: key auth_pass is set but VRRPv3 has no authentication: remove auth_pass or set vrrp_version 2&#10;</xsl:text>
    </xsl:if>
    <xsl:if test="$preempt != 'yes' and $preempt != 'no'">
      <xsl:value-of select="concat('service keepalived: key preempt is &quot;', $preempt, '&quot;: use yes or no&#10;')"/>
    </xsl:if>
    <xsl:if test="$preempt_delay != '' and (string(number($preempt_delay)) = 'NaN' or $preempt_delay &lt; 0 or $preempt_delay &gt; 1000)">
      <xsl:value-of select="concat('service keepalived: key preempt_delay is &quot;', $preempt_delay, '&quot;: give seconds from 0 to 1000, or leave it empty&#10;')"/>
    </xsl:if>
    <xsl:if test="$track != ''">
      <xsl:for-each select="$self/key[@name = 'check_interval' or @name = 'check_fall' or @name = 'check_rise']">
        <xsl:if test="string(number(.)) = 'NaN' or . &lt;= 0">
          <xsl:value-of select="concat('service keepalived: key ', @name, ' is &quot;', ., '&quot;: give a positive number (the health check of track_service)&#10;')"/>
        </xsl:if>
      </xsl:for-each>
      <xsl:if test="count($self/key[@name = 'check_interval' or @name = 'check_fall' or @name = 'check_rise']) != 3">
        <xsl:text>service keepalived: track_service needs the keys check_interval, check_fall and check_rise&#10;</xsl:text>
      </xsl:if>
    </xsl:if>
    <xsl:if test="not($instances)">
      <xsl:text>service keepalived: key instances is empty: name at least one VRRP instance, with keys NAME.virtual_router_id and NAME.virtual_addresses&#10;</xsl:text>
    </xsl:if>
    <xsl:for-each select="$peers">
      <xsl:variable name="number">
        <xsl:call-template name="ip4"><xsl:with-param name="address" select="."/></xsl:call-template>
      </xsl:variable>
      <xsl:if test="string(number($number)) = 'NaN' or contains(., '/')">
        <xsl:value-of select="concat('service keepalived: key unicast_peers has &quot;', ., '&quot;: give the link addresses of the peers without prefix, e.g. 10.99.0.2&#10;')"/>
      </xsl:if>
    </xsl:for-each>
    <xsl:for-each select="$instances">
      <xsl:variable name="name" select="string(.)"/>
      <xsl:variable name="id" select="string($self/key[@name = concat($name, '.virtual_router_id')])"/>
      <xsl:variable name="id-ok">
        <xsl:call-template name="is-integer">
          <xsl:with-param name="value" select="$id"/><xsl:with-param name="min" select="1"/><xsl:with-param name="max" select="255"/>
        </xsl:call-template>
      </xsl:variable>
      <xsl:if test="$id-ok != 'yes'">
        <xsl:value-of select="concat('service keepalived: key ', $name, '.virtual_router_id is &quot;', $id, '&quot;: give an integer from 1 to 255, the same on every node of the pair and unique on the link&#10;')"/>
      </xsl:if>
      <xsl:for-each select="preceding-sibling::*">
        <xsl:if test="$id != '' and string($self/key[@name = concat(current(), '.virtual_router_id')]) = $id">
          <xsl:value-of select="concat('service keepalived: instances ', ., ' and ', $name, ' both have virtual_router_id ', $id, ': each VRRP instance on a link needs its own router id&#10;')"/>
        </xsl:if>
      </xsl:for-each>
      <xsl:variable name="vips" select="str:tokenize($self/key[@name = concat($name, '.virtual_addresses')], ' &#9;&#10;')"/>
      <xsl:if test="not($vips)">
        <xsl:value-of select="concat('service keepalived: key ', $name, '.virtual_addresses is missing: give the virtual address(es) with prefix, e.g. 10.99.0.10/24&#10;')"/>
      </xsl:if>
      <xsl:for-each select="$vips">
        <xsl:variable name="vip-ok">
          <xsl:call-template name="is-prefixed"><xsl:with-param name="address" select="."/></xsl:call-template>
        </xsl:variable>
        <xsl:variable name="vip-number">
          <xsl:call-template name="ip4"><xsl:with-param name="address" select="."/></xsl:call-template>
        </xsl:variable>
        <xsl:choose>
          <xsl:when test="$vip-ok != 'yes'">
            <xsl:value-of select="concat('service keepalived: key ', $name, '.virtual_addresses has &quot;', ., '&quot;: give an IPv4 address with prefix, e.g. 10.99.0.10/24&#10;')"/>
          </xsl:when>
          <xsl:when test="$address-ok = 'yes' and floor($vip-number div $link-size) != floor($link-number div $link-size)">
            <xsl:value-of select="concat('service keepalived: virtual address ', ., ' of instance ', $name, ' is outside the link ', $link-network, ' of ', $interface, ' (key address ', $address, '): use an address inside ', $link-network, '&#10;')"/>
          </xsl:when>
          <xsl:when test="$address-ok = 'yes' and $vip-number = $link-number">
            <xsl:value-of select="concat('service keepalived: virtual address ', ., ' of instance ', $name, ' is the address of this node: use a free address of ', $link-network, '&#10;')"/>
          </xsl:when>
        </xsl:choose>
      </xsl:for-each>
    </xsl:for-each>
  </xsl:template>

  <xsl:template match="/">
    <xsl:variable name="problems">
      <xsl:call-template name="problems"/>
    </xsl:variable>
    <xsl:if test="string($problems) != ''">
      <xsl:message terminate="yes">
        <xsl:value-of select="substring($problems, 1, string-length($problems) - 1)"/>
      </xsl:message>
    </xsl:if>
    <xsl:text># rendered by nodows from the model (service </xsl:text>
    <xsl:value-of select="$service"/>
    <xsl:text>); do not edit
global_defs {
    router_id </xsl:text>
    <xsl:choose>
      <xsl:when test="$server != ''"><xsl:value-of select="$server"/></xsl:when>
      <xsl:otherwise>nodows</xsl:otherwise>
    </xsl:choose>
    <xsl:text>
    vrrp_version </xsl:text>
    <xsl:value-of select="$version"/>
    <xsl:text>
    script_user root
    enable_script_security
}
</xsl:text>
    <xsl:if test="$track != ''">
      <xsl:text>
# Health: a failed </xsl:text>
      <xsl:value-of select="$track"/>
      <xsl:text> puts the node in FAULT (it gives up the address).
vrrp_script nodows_health {
    script "/sbin/initctl status </xsl:text>
      <xsl:value-of select="$track"/>
      <xsl:text>"
    interval </xsl:text>
      <xsl:value-of select="$self/key[@name = 'check_interval']"/>
      <xsl:text>
    fall </xsl:text>
      <xsl:value-of select="$self/key[@name = 'check_fall']"/>
      <xsl:text>
    rise </xsl:text>
      <xsl:value-of select="$self/key[@name = 'check_rise']"/>
      <xsl:text>
}
</xsl:text>
    </xsl:if>
    <xsl:variable name="grouped" select="count($instances) &gt; 1"/>
    <xsl:if test="$grouped">
      <xsl:text>
# The instances move together; the group's state drives the mode.
vrrp_sync_group nodows {
    group {
</xsl:text>
      <xsl:for-each select="$instances">
        <xsl:value-of select="concat('        ', ., '&#10;')"/>
      </xsl:for-each>
      <xsl:text>    }
</xsl:text>
      <xsl:call-template name="hooks"/>
      <xsl:text>}
</xsl:text>
    </xsl:if>
    <xsl:for-each select="$instances">
      <xsl:variable name="name" select="string(.)"/>
      <xsl:text>
vrrp_instance </xsl:text>
      <xsl:value-of select="$name"/>
      <xsl:text> {
    state BACKUP
    interface </xsl:text>
      <xsl:value-of select="$interface"/>
      <xsl:text>
    virtual_router_id </xsl:text>
      <xsl:value-of select="$self/key[@name = concat($name, '.virtual_router_id')]"/>
      <xsl:text>
    priority </xsl:text>
      <xsl:value-of select="$priority"/>
      <xsl:text>
    advert_int </xsl:text>
      <xsl:value-of select="$advert_int"/>
      <xsl:text>&#10;</xsl:text>
      <xsl:choose>
        <xsl:when test="$preempt = 'no'">
          <xsl:text>    nopreempt&#10;</xsl:text>
        </xsl:when>
        <xsl:when test="$preempt_delay != ''">
          <xsl:value-of select="concat('    preempt_delay ', $preempt_delay, '&#10;')"/>
        </xsl:when>
      </xsl:choose>
      <xsl:if test="$auth_pass != ''">
        <xsl:value-of select="concat('    authentication {&#10;        auth_type PASS&#10;        auth_pass ', $auth_pass, '&#10;    }&#10;')"/>
      </xsl:if>
      <xsl:if test="$peers">
        <xsl:value-of select="concat('    unicast_src_ip ', substring-before($address, '/'), '&#10;    unicast_peer {&#10;')"/>
        <xsl:for-each select="$peers">
          <xsl:value-of select="concat('        ', ., '&#10;')"/>
        </xsl:for-each>
        <xsl:text>    }&#10;</xsl:text>
      </xsl:if>
      <xsl:text>    virtual_ipaddress {&#10;</xsl:text>
      <xsl:for-each select="str:tokenize($self/key[@name = concat($name, '.virtual_addresses')], ' &#9;&#10;')">
        <xsl:value-of select="concat('        ', ., ' dev ', $interface, '&#10;')"/>
      </xsl:for-each>
      <xsl:text>    }&#10;</xsl:text>
      <xsl:if test="not($grouped)">
        <xsl:call-template name="hooks"/>
      </xsl:if>
      <xsl:text>}&#10;</xsl:text>
    </xsl:for-each>
  </xsl:template>

  <xsl:template name="hooks">
    <xsl:if test="$track != ''">
      <xsl:text>    track_script {
        nodows_health
    }
</xsl:text>
    </xsl:if>
    <xsl:text>    notify /etc/keepalived/nodows-notify.sh
</xsl:text>
  </xsl:template>
</xsl:stylesheet>
