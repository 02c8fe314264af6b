<?xml version="1.0"?>
<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
  <xsl:output method="text"/>
  <xsl:template match="/">
    <xsl:if test="not(/model/service[@name='hello']/key[@name='port'])">
      <xsl:message terminate="yes">service hello needs the key port</xsl:message>
    </xsl:if>
  </xsl:template>
</xsl:stylesheet>
