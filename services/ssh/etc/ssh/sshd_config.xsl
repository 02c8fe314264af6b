<?xml version="1.0" encoding="utf-8"?>
<!-- /etc/ssh/sshd_config. The model decides the login policy: dev allows
     root with a password, every other profile wants keys only. Each value
     is one line (nodows:line): a newline cannot add a directive. -->
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
Include /etc/ssh/sshd_config.d/*.conf

HostKey /var/lib/nodows/ssh/ssh_host_ed25519_key
AuthorizedKeysFile .ssh/authorized_keys /etc/ssh/authorized_keys/%u
Port </xsl:text>
    <xsl:value-of select="nodows:line($self/key[@name = 'port'])"/>
    <xsl:text>
PermitRootLogin </xsl:text>
    <xsl:value-of select="nodows:line($self/key[@name = 'permit_root_login'])"/>
    <xsl:text>
PasswordAuthentication </xsl:text>
    <xsl:value-of select="nodows:line($self/key[@name = 'password_authentication'])"/>
    <xsl:text>
PermitEmptyPasswords </xsl:text>
    <xsl:value-of select="nodows:line($self/key[@name = 'permit_empty_passwords'])"/>
    <xsl:text>
KbdInteractiveAuthentication no
UsePAM </xsl:text>
    <xsl:value-of select="nodows:line($self/key[@name = 'use_pam'])"/>
    <xsl:text>
X11Forwarding no
PrintMotd no
AcceptEnv LANG LC_*
Subsystem sftp /usr/lib/openssh/sftp-server
</xsl:text>
  </xsl:template>
</xsl:stylesheet>
