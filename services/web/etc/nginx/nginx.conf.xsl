<?xml version="1.0" encoding="utf-8"?>
<!-- /etc/nginx/nginx.conf for the web service. The daemon runs in the
     foreground because initd passes -g 'daemon off;'. -->
<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform" xmlns:nodows="urn:nodows">
  <xsl:output method="text" encoding="utf-8"/>
  <xsl:param name="server"/>
  <xsl:param name="mode"/>
  <xsl:param name="service"/>
  <xsl:param name="self"/>
  <xsl:template match="/">
    <xsl:text># rendered by nodows from the model (service </xsl:text>
    <xsl:value-of select="$service"/>
    <xsl:text>); do not edit
user www-data;
worker_processes </xsl:text>
    <xsl:value-of select="nodows:line($self/key[@name = 'worker_processes'])"/>
    <xsl:text>;
pid /run/nginx.pid;
error_log stderr </xsl:text>
    <xsl:value-of select="nodows:line($self/key[@name = 'error_log_level'])"/>
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
    <xsl:value-of select="nodows:line($self/key[@name = 'access_log'])"/>
    <xsl:text>;
    include /etc/nginx/sites-enabled/*;
}
</xsl:text>
  </xsl:template>
</xsl:stylesheet>
