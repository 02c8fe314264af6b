<?xml version="1.0"?>
<!-- Imported: declares the parameter for its importer. -->
<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
  <xsl:param name="self"/>
  <xsl:template name="port"><xsl:value-of select="$self/key[@name = 'port']"/></xsl:template>
</xsl:stylesheet>
