<?xml version="1.0" encoding="utf-8"?>
<!-- /etc/nginx/standby.conf: a self-contained nginx configuration for the
     standby instance (foreground through -g 'daemon off;'). -->
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
worker_processes 1;
pid /run/nginx-standby.pid;
error_log stderr warn;

events {
    worker_connections 64;
}

http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    server_tokens off;
    access_log off;

    server {
        listen </xsl:text>
    <xsl:value-of select="nodows:line($self/key[@name = 'port'])"/>
    <xsl:text> default_server;
        server_name _;
        root /var/www/standby;
        index index.html;

        location / {
            try_files $uri $uri/ /index.html;
        }
    }
}
</xsl:text>
  </xsl:template>
</xsl:stylesheet>
