<?xml version="1.0" encoding="utf-8"?>
<!-- /usr/local/etc/rc.d/nodows: an rc.subr(8) script that starts initd
     (not as PID 1) once the base system is up, backgrounded by daemon(8).
     rcorder(8) reads the PROVIDE/REQUIRE/KEYWORD lines. -->
<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
  <xsl:output method="text" encoding="utf-8"/>
  <xsl:param name="server"/>
  <xsl:param name="mode"/>
  <xsl:param name="service"/>
  <xsl:template match="/">
    <xsl:text>#!/bin/sh
#
# rendered by nodows from the model (service </xsl:text>
    <xsl:value-of select="$service"/>
    <xsl:text>, mode </xsl:text>
    <xsl:value-of select="$mode"/>
    <xsl:text>); do not edit
#
# PROVIDE: nodows
# REQUIRE: LOGIN NETWORKING
# KEYWORD: shutdown
#
# Add these lines to /etc/rc.conf (or /etc/rc.conf.d/nodows) to run nodows:
# nodows_enable="YES"
# nodows_mode="</xsl:text>
    <xsl:value-of select="$mode"/>
    <xsl:text>"	# the initial mode: dev, test, production or failover

. /etc/rc.subr

name="nodows"
rcvar="nodows_enable"
desc="nodows service manager (initd)"

load_rc_config $name

: ${nodows_enable:="NO"}
: ${nodows_mode:="</xsl:text>
    <xsl:value-of select="$mode"/>
    <xsl:text>"}
: ${nodows_services:="/usr/local/etc/nodows/services"}
: ${nodows_model:="/usr/local/etc/nodows/model.xml"}
: ${nodows_socket:="/var/run/initd.sock"}
: ${nodows_state:="/var/run/nodows"}
: ${nodows_log_dir:="/var/log/nodows"}
: ${nodows_output:="/dev/console"}

pidfile="/var/run/${name}.pid"
command="/usr/local/sbin/initd"
command_args="--services ${nodows_services} --socket ${nodows_socket} --state ${nodows_state} --mode ${nodows_mode} --log-dir ${nodows_log_dir} --model ${nodows_model} --render-command /usr/local/bin/nodows --root /"
start_precmd="${name}_prestart"
start_cmd="${name}_start"

# The image builder edits /etc/master.passwd (root locked) but cannot
# rebuild the password databases on Linux; they are rebuilt here, before
# the first login (getty starts after rc(8), sshd under initd).
nodows_prestart()
{
	if [ /etc/master.passwd -nt /etc/spwd.db ]; then
		/usr/sbin/pwd_mkdb -p /etc/master.passwd
	fi
	mkdir -p "${nodows_state}" "${nodows_log_dir}"
}

# A custom start_cmd gets no "already running" check from rc.subr; rc_pid
# is set from the pidfile before it runs.
# daemon(8) puts initd in the background, writes its pid (the pid of initd
# itself, so rc.subr's stop and status find it) and sends its console
# lines to ${nodows_output}.
nodows_start()
{
	if [ -n "${rc_pid}" ]; then
		echo "${name} already running? (pid=${rc_pid})."
		return 1
	fi
	check_startmsgs &amp;&amp; echo "Starting ${name}."
	/usr/sbin/daemon -p "${pidfile}" -o "${nodows_output}" ${command} ${command_args}
}

run_rc_command "$1"
</xsl:text>
  </xsl:template>
</xsl:stylesheet>
