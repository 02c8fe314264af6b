<?xml version="1.0" encoding="utf-8"?>
<!-- /etc/nginx/nginx.conf for the web service. The daemon runs in the
     foreground because initd passes -g 'daemon off;'. -->
<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
  <xsl:output method="text" encoding="utf-8"/>
  <xsl:param name="server"/>
  <xsl:param name="mode"/>
  <xsl:param name="service"/>
  <xsl:param name="self"/>
  <xsl:variable name="web" select="$self"/>
  <xsl:template match="/">
    <xsl:text># rendered by nodows from the model (service </xsl:text>
    <xsl:value-of select="$service"/>
    <xsl:text>, mode </xsl:text>
    <xsl:value-of select="$mode"/>
    <xsl:text>); do not edit
user www-data;
worker_processes </xsl:text>
    <xsl:call-template name="key"><xsl:with-param name="name" select="'worker_processes'"/><xsl:with-param name="default" select="'1'"/></xsl:call-template>
    <xsl:text>;
pid /run/nginx.pid;
error_log stderr </xsl:text>
    <xsl:call-template name="key"><xsl:with-param name="name" select="'error_log_level'"/><xsl:with-param name="default" select="'warn'"/></xsl:call-template>
    <xsl:text>;

events {
    worker_connections 64;
}

http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    sendfile on;
    server_tokens off;
    access_log </xsl:text>
    <xsl:call-template name="key"><xsl:with-param name="name" select="'access_log'"/><xsl:with-param name="default" select="'off'"/></xsl:call-template>
    <xsl:text>;
    include /etc/nginx/sites-enabled/*;
}
</xsl:text>
  </xsl:template>
  <!-- The value of key $name of this service, or $default when the model has none. -->
  <xsl:template name="key">
    <xsl:param name="name"/>
    <xsl:param name="default"/>
    <xsl:variable name="value" select="$web/key[@name = $name]"/>
    <xsl:choose>
      <xsl:when test="$value"><xsl:value-of select="$value"/></xsl:when>
      <xsl:otherwise><xsl:value-of select="$default"/></xsl:otherwise>
    </xsl:choose>
  </xsl:template>
</xsl:stylesheet>
