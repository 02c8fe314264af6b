//! A NIC hot-plugged into a running appliance (boot 1): the kernel's
//! uevent reaches initd as `net-device-added:eth1`, initd renders the `net`
//! service and runs it again, and the interface comes up with the address
//! the model gives it (`address.eth1` of service net). Unplugged again,
//! initd reports `net-device-removed:eth1`, and the later steps of the
//! boot find the machine as it was (keepalived's eth1 absent).

use anyhow::Context;

use super::{guest_server, model_text, model_value, SERVICE_TIMEOUT};
use crate::qemu::Vm;

/// The hot-plugged NIC: its network exists only in this QEMU (restrict=on).
const NETDEV: &str = "hot0";
const MAC: &str = "52:54:00:00:03:15";
const NET: &str = "10.0.3.0/24";
const INTERFACE: &str = "eth1";

pub(super) fn check_nic_hotplug(vm: &mut Vm, mode: &str) -> anyhow::Result<()> {
    let server = guest_server(vm)?;
    let key = format!("address.{INTERFACE}");
    let address = model_value(&model_text()?, "net", &key, mode, server.as_deref())
        .with_context(|| format!("models/default.xml gives net no {key} in mode {mode}"))?;
    vm.succeed(&format!("! test -e /sys/class/net/{INTERFACE}"))?;
    let mark = vm.console_mark();
    vm.hotplug_nic(NETDEV, MAC, NET)?;
    vm.wait_for_console_text_since(
        mark,
        format!("initd: device net-device-added:{INTERFACE}").as_str(),
        SERVICE_TIMEOUT,
    )?;
    // net's own output goes to its log, not the console.
    vm.wait_until_succeeds(
        &format!("grep -q 'nodows: net {INTERFACE} {address}' /var/log/nodows/net.log"),
        SERVICE_TIMEOUT,
    )?;
    let line = vm.wait_until_succeeds(
        &format!("ip -o -4 address show dev {INTERFACE} | grep ' {address} '"),
        SERVICE_TIMEOUT,
    )?;
    let link = vm.succeed(&format!(
        "cat /sys/class/net/{INTERFACE}/address /sys/class/net/{INTERFACE}/operstate"
    ))?;
    if !link.contains(MAC) || link.contains("down") {
        return Err(vm.failure(&format!(
            "{INTERFACE} is not the hot-plugged NIC {MAC}, or it is down: {link}"
        )));
    }
    eprintln!("    {}", line.trim());
    let mark = vm.console_mark();
    vm.unplug_nic(NETDEV)?;
    vm.wait_for_console_text_since(
        mark,
        format!("initd: device net-device-removed:{INTERFACE}").as_str(),
        SERVICE_TIMEOUT,
    )?;
    vm.wait_until_succeeds(
        &format!("! test -e /sys/class/net/{INTERFACE}"),
        SERVICE_TIMEOUT,
    )?;
    Ok(())
}
