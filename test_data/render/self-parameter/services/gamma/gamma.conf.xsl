<?xml version="1.0"?>
<!-- $self declared in an imported stylesheet. -->
<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
  <xsl:import href="common.xsl"/>
  <xsl:output method="text"/>
  <xsl:template match="/">
    <xsl:text>port: </xsl:text><xsl:call-template name="port"/>
    <xsl:text>&#10;</xsl:text>
  </xsl:template>
</xsl:stylesheet>
