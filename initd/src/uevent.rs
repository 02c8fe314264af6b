//! Kernel uevents without udev: the datagrams of a NETLINK_KOBJECT_UEVENT
//! socket (`sys::uevent_socket`) parsed into typed device events for net
//! and block devices added or removed.
//!
//! A kernel uevent is `ACTION@DEVPATH` and then `KEY=value` fields, each
//! ended by a NUL byte: `add@/devices/.../net/eth1\0ACTION=add\0
//! DEVPATH=...\0SUBSYSTEM=net\0INTERFACE=eth1\0IFINDEX=3\0SEQNUM=1234\0`.
//! udev's own re-broadcasts start with `libudev\0` and a binary header;
//! they are not the kernel's and are refused.

use std::collections::BTreeMap;

use servicedef::{Device, DeviceAction, Event, Subsystem};

/// The largest uevent the kernel sends (UEVENT_BUFFER_SIZE is 2048; room
/// for a header and more).
pub const MAX_MESSAGE: usize = 8192;

/// One kernel uevent: the action, the device path and every field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uevent {
    pub action: String,
    pub devpath: String,
    /// Every `KEY=value` field (ACTION, SUBSYSTEM, INTERFACE, DEVNAME, ...).
    pub fields: BTreeMap<String, String>,
}

/// A device added or removed: the event services `start-on`, and the
/// uevent's fields (IFINDEX, MAJOR, MINOR, DEVTYPE, ...) for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceEvent {
    pub device: Device,
    pub attributes: BTreeMap<String, String>,
}

impl DeviceEvent {
    pub fn event(&self) -> Event {
        Event::Device(self.device.clone())
    }

    /// `net-device-added:eth1 IFINDEX=3 ...` for the console.
    pub fn describe(&self) -> String {
        let mut text = self.event().to_string();
        for (key, value) in &self.attributes {
            text.push_str(&format!(" {key}={value}"));
        }
        text
    }
}

/// Why a datagram is no kernel uevent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// udev's re-broadcast (`libudev\0...`), not the kernel's.
    Udev,
    /// No `ACTION@DEVPATH` header.
    NoHeader,
    /// A field that is not `KEY=value` or not text.
    BadField(String),
    /// The header and the ACTION field disagree.
    ActionMismatch,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseError::Udev => write!(formatter, "a udev message, not the kernel's"),
            ParseError::NoHeader => write!(formatter, "no ACTION@DEVPATH header"),
            ParseError::BadField(field) => write!(formatter, "bad field {field:?}"),
            ParseError::ActionMismatch => {
                write!(formatter, "the header's action differs from ACTION=")
            }
        }
    }
}

/// Parses one datagram of the kernel's uevent socket.
pub fn parse(bytes: &[u8]) -> Result<Uevent, ParseError> {
    if bytes.starts_with(b"libudev\0") {
        return Err(ParseError::Udev);
    }
    let mut parts = bytes
        .split(|&byte| byte == 0)
        .filter(|part| !part.is_empty());
    let header = parts
        .next()
        .and_then(|header| std::str::from_utf8(header).ok())
        .ok_or(ParseError::NoHeader)?;
    let (action, devpath) = header.split_once('@').ok_or(ParseError::NoHeader)?;
    if action.is_empty() || !devpath.starts_with('/') {
        return Err(ParseError::NoHeader);
    }
    let mut fields = BTreeMap::new();
    for part in parts {
        let field = std::str::from_utf8(part)
            .map_err(|_| ParseError::BadField(String::from_utf8_lossy(part).into_owned()))?;
        let (key, value) = field
            .split_once('=')
            .filter(|(key, _)| !key.is_empty())
            .ok_or_else(|| ParseError::BadField(field.to_string()))?;
        fields.insert(key.to_string(), value.to_string());
    }
    if fields
        .get("ACTION")
        .is_some_and(|field| field.as_str() != action)
    {
        return Err(ParseError::ActionMismatch);
    }
    Ok(Uevent {
        action: action.to_string(),
        devpath: devpath.to_string(),
        fields,
    })
}

/// The fields kept as a device event's attributes: what identifies the
/// device, not the bookkeeping (ACTION, DEVPATH, SUBSYSTEM, SEQNUM).
const BOOKKEEPING: [&str; 4] = ["ACTION", "DEVPATH", "SUBSYSTEM", "SEQNUM"];

impl Uevent {
    /// The device event of a net or block device added or removed; `None`
    /// for every other subsystem and action (change, move, bind, ...).
    pub fn device_event(&self) -> Option<DeviceEvent> {
        let action = match self.action.as_str() {
            "add" => DeviceAction::Added,
            "remove" => DeviceAction::Removed,
            _ => return None,
        };
        let (subsystem, name_field) = match self.fields.get("SUBSYSTEM")?.as_str() {
            "net" => (Subsystem::Net, "INTERFACE"),
            "block" => (Subsystem::Block, "DEVNAME"),
            _ => return None,
        };
        let name = self.fields.get(name_field)?;
        // DEVNAME may be a path below /dev; the event names the device.
        let name = name.rsplit('/').next().unwrap_or(name);
        if !servicedef::is_device_name(name) {
            return None;
        }
        let attributes = self
            .fields
            .iter()
            .filter(|(key, _)| !BOOKKEEPING.contains(&key.as_str()))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        Some(DeviceEvent {
            device: Device {
                subsystem,
                action,
                name: name.to_string(),
            },
            attributes,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn message(fields: &[&str]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for field in fields {
            bytes.extend_from_slice(field.as_bytes());
            bytes.push(0);
        }
        bytes
    }

    #[test]
    fn a_net_device_added_becomes_its_typed_event_with_attributes() {
        let bytes = message(&[
            "add@/devices/pci0000:00/0000:00:04.0/virtio1/net/eth1",
            "ACTION=add",
            "DEVPATH=/devices/pci0000:00/0000:00:04.0/virtio1/net/eth1",
            "SUBSYSTEM=net",
            "INTERFACE=eth1",
            "IFINDEX=3",
            "SEQNUM=1234",
        ]);
        let uevent = parse(&bytes).unwrap();
        assert_eq!(uevent.action, "add");
        assert_eq!(uevent.fields["IFINDEX"], "3");
        let event = uevent.device_event().unwrap();
        assert_eq!(event.event().to_string(), "net-device-added:eth1");
        assert_eq!(
            event.describe(),
            "net-device-added:eth1 IFINDEX=3 INTERFACE=eth1"
        );
    }

    #[test]
    fn a_block_device_removed_is_named_by_devname() {
        let bytes = message(&[
            "remove@/devices/pci0000:00/0000:00:05.0/virtio2/block/vdb",
            "ACTION=remove",
            "DEVPATH=/devices/pci0000:00/0000:00:05.0/virtio2/block/vdb",
            "SUBSYSTEM=block",
            "MAJOR=254",
            "MINOR=16",
            "DEVNAME=vdb",
            "DEVTYPE=disk",
            "SEQNUM=99",
        ]);
        let event = parse(&bytes).unwrap().device_event().unwrap();
        assert_eq!(event.event().to_string(), "block-device-removed:vdb");
        assert_eq!(event.attributes["DEVTYPE"], "disk");
        assert!(!event.attributes.contains_key("SEQNUM"));
    }

    #[test]
    fn other_subsystems_actions_and_udev_messages_are_no_device_events() {
        let change = message(&[
            "change@/devices/virtual/net/lo",
            "ACTION=change",
            "SUBSYSTEM=net",
            "INTERFACE=lo",
        ]);
        assert_eq!(parse(&change).unwrap().device_event(), None);
        let usb = message(&[
            "add@/devices/usb1/1-1",
            "ACTION=add",
            "SUBSYSTEM=usb",
            "DEVNAME=bus/usb/001/002",
        ]);
        assert_eq!(parse(&usb).unwrap().device_event(), None);
        let nameless = message(&["add@/devices/virtual/net/x", "ACTION=add", "SUBSYSTEM=net"]);
        assert_eq!(parse(&nameless).unwrap().device_event(), None);
        let wildcard = message(&[
            "add@/devices/virtual/net/x",
            "ACTION=add",
            "SUBSYSTEM=net",
            "INTERFACE=e*",
        ]);
        assert_eq!(parse(&wildcard).unwrap().device_event(), None);
        assert_eq!(parse(b"libudev\0\xfe\xed"), Err(ParseError::Udev));
    }

    #[test]
    fn malformed_messages_are_refused() {
        assert_eq!(parse(b""), Err(ParseError::NoHeader));
        assert_eq!(parse(b"add\0ACTION=add\0"), Err(ParseError::NoHeader));
        assert_eq!(parse(b"add@devices\0"), Err(ParseError::NoHeader));
        assert_eq!(
            parse(b"add@/d\0NOEQUALS\0"),
            Err(ParseError::BadField("NOEQUALS".to_string()))
        );
        assert_eq!(
            parse(b"add@/d\0=x\0"),
            Err(ParseError::BadField("=x".to_string()))
        );
        assert_eq!(
            parse(b"add@/d\0ACTION=remove\0"),
            Err(ParseError::ActionMismatch)
        );
        assert!(matches!(
            parse(b"add@/d\0K=\xff\0"),
            Err(ParseError::BadField(_))
        ));
    }
}
