//! The one ethtool setting Twill needs: transmit checksum offload.
//!
//! On by default on the VXLAN device: off, the kernel checksums every packet in software
//! before encapsulation, which costs most of a TCP stream's throughput. The fault that
//! made flannel users turn it off (an encapsulated packet NATed by a masquerade rule
//! that matches kube-proxy's mark, leaving with a wrong outer UDP checksum) is kept
//! away by the agent's firewall, which exempts its VXLAN packets from conntrack.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_STXCSUM: u32 = 0x17;

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: *mut EthtoolValue,
    _pad: [u8; 16],
}

fn ioctl(ifname: &str, value: &mut EthtoolValue) -> std::io::Result<()> {
    if ifname.len() >= libc::IFNAMSIZ {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("interface name {ifname:?} is too long"),
        ));
    }
    // SAFETY: a datagram socket we own; the request points at live, correctly laid
    // out memory for the duration of the call.
    unsafe {
        let raw = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let sock = OwnedFd::from_raw_fd(raw);
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            data: value,
            _pad: [0; 16],
        };
        for (dst, src) in req.name.iter_mut().zip(ifname.bytes()) {
            *dst = src as libc::c_char;
        }
        if libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL as _, &mut req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether transmit checksum offload is on for `ifname` (in the caller's namespace).
pub fn tx_checksum(ifname: &str) -> std::io::Result<bool> {
    let mut v = EthtoolValue {
        cmd: ETHTOOL_GTXCSUM,
        data: 0,
    };
    ioctl(ifname, &mut v)?;
    Ok(v.data != 0)
}

/// Turns transmit checksum offload on or off; does nothing when it already is.
pub fn set_tx_checksum(ifname: &str, on: bool) -> std::io::Result<()> {
    if tx_checksum(ifname)? == on {
        return Ok(());
    }
    let mut v = EthtoolValue {
        cmd: ETHTOOL_STXCSUM,
        data: u32::from(on),
    };
    ioctl(ifname, &mut v)
}
