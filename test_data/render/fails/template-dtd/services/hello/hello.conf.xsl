<?xml version="1.0"?>
<!DOCTYPE xsl:stylesheet [
  <!ENTITY secret SYSTEM "file:///etc/hostname">
]>
<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
  <xsl:output method="text"/>
  <xsl:template match="/">&secret;</xsl:template>
</xsl:stylesheet>
