//! Who listens on the host's TCP ports: `/proc/net/tcp` and `tcp6` for the listening
//! sockets, `/proc/PID/fd` for the process holding each (its socket inode), so a port
//! lab is asked to publish can be refused naming what holds it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;

use super::Sysroot;

/// A listening TCP socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listener {
    pub addr: IpAddr,
    pub port: u16,
    pub inode: u64,
    /// "PID (COMM)" of a process holding the socket, when one could be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
}

impl Listener {
    /// Whether a connection to `addr:port` on the host would reach this socket (so a rule
    /// publishing `addr:port` would take its connections away). `0.0.0.0` publishes the
    /// port on every address: any socket on the port is caught.
    pub fn catches(&self, addr: Ipv4Addr, port: u16) -> bool {
        if self.port != port {
            return false;
        }
        if addr.is_unspecified() {
            return true;
        }
        match self.addr {
            IpAddr::V4(a) => a == addr || a.is_unspecified(),
            // A dual-stack socket on :: takes IPv4 too; a mapped address is the IPv4 one.
            IpAddr::V6(a) => a.is_unspecified() || a.to_ipv4_mapped() == Some(addr),
        }
    }
}

impl std::fmt::Display for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = match self.addr {
            IpAddr::V4(a) => format!("{a}:{}", self.port),
            IpAddr::V6(a) => format!("[{a}]:{}", self.port),
        };
        match &self.holder {
            Some(h) => write!(f, "{h}, listening on {at}"),
            None => write!(
                f,
                "a socket listening on {at} (inode {}, its process not readable)",
                self.inode
            ),
        }
    }
}

/// TCP's LISTEN state as `/proc/net/tcp` writes it.
const LISTEN: &str = "0A";

/// The listening sockets of a `/proc/net/tcp` (`v6`: `tcp6`) text. Addresses there are
/// hexadecimal words in the kernel's (little-endian, on these hosts) byte order.
pub fn parse_proc_net_tcp(text: &str, v6: bool) -> Vec<Listener> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 || f[3] != LISTEN {
            continue;
        }
        let Some((addr, port)) = f[1].split_once(':') else {
            continue;
        };
        let Ok(port) = u16::from_str_radix(port, 16) else {
            continue;
        };
        let addr = if v6 { parse_v6(addr) } else { parse_v4(addr) };
        let (Some(addr), Ok(inode)) = (addr, f[9].parse::<u64>()) else {
            continue;
        };
        out.push(Listener {
            addr,
            port,
            inode,
            holder: None,
        });
    }
    out
}

fn parse_v4(hex: &str) -> Option<IpAddr> {
    let word = u32::from_str_radix(hex, 16).ok()?;
    Some(IpAddr::V4(Ipv4Addr::from(word.to_le_bytes())))
}

fn parse_v6(hex: &str) -> Option<IpAddr> {
    if hex.len() != 32 {
        return None;
    }
    let mut bytes = [0u8; 16];
    for i in 0..4 {
        let word = u32::from_str_radix(&hex[i * 8..i * 8 + 8], 16).ok()?;
        bytes[i * 4..i * 4 + 4].copy_from_slice(&word.to_le_bytes());
    }
    Some(IpAddr::V6(Ipv6Addr::from(bytes)))
}

/// The host's listening TCP sockets on any of `ports`, each with the process that holds
/// it when one can be read.
pub fn listeners_on(sysroot: &Sysroot, ports: &[u16]) -> Vec<Listener> {
    let mut found: Vec<Listener> = [("/proc/net/tcp", false), ("/proc/net/tcp6", true)]
        .into_iter()
        .filter_map(|(file, v6)| sysroot.read_opt(file).map(|t| parse_proc_net_tcp(&t, v6)))
        .flatten()
        .filter(|l| ports.contains(&l.port))
        .collect();
    if found.is_empty() {
        return found;
    }
    // One walk over every process's descriptors, only when some port is held.
    let Ok(procs) = std::fs::read_dir(sysroot.path("/proc")) else {
        return found;
    };
    for p in procs.flatten() {
        let name = p.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let Some(inode) = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok())
            else {
                continue;
            };
            for l in found
                .iter_mut()
                .filter(|l| l.inode == inode && l.holder.is_none())
            {
                let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
                l.holder = Some(format!("process {pid} ({})", comm.trim()));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_sockets_are_read_with_their_addresses() {
        // Captured on a Debian 12 host: a test's sockets on 127.0.0.1:18080 and [::]:18081,
        // something on 0.0.0.0:2024, dnsmasq on a libvirt bridge's 10.251.224.1:53, a
        // connection in TIME_WAIT (not listening).
        let tcp = include_str!("../../tests/fixtures/proc/net-tcp.txt");
        let tcp6 = include_str!("../../tests/fixtures/proc/net-tcp6.txt");
        let v4 = parse_proc_net_tcp(tcp, false);
        let v6 = parse_proc_net_tcp(tcp6, true);
        let at = |ls: &[Listener]| -> Vec<String> {
            ls.iter()
                .map(|l| format!("{}:{}", l.addr, l.port))
                .collect()
        };
        assert_eq!(
            at(&v4),
            ["127.0.0.1:18080", "0.0.0.0:2024", "10.251.224.1:53"]
        );
        assert_eq!(at(&v6), [":::18081"]);
        assert_eq!(v4[0].inode, 497804);
        let lo = Ipv4Addr::LOCALHOST;
        assert!(v4[0].catches(lo, 18080));
        assert!(!v4[0].catches(Ipv4Addr::new(127, 0, 0, 2), 18080));
        assert!(v4[1].catches(Ipv4Addr::new(127, 0, 0, 2), 2024));
        assert!(!v4[2].catches(lo, 53));
        assert!(v6[0].catches(lo, 18081));
        assert!(!v6[0].catches(lo, 18080));
        // On every address: whatever listens on the port, wherever.
        let all = Ipv4Addr::UNSPECIFIED;
        assert!(v4[0].catches(all, 18080));
        assert!(v4[2].catches(all, 53));
        assert!(!v4[2].catches(all, 54));
        // A specific address: a socket on it or on all addresses.
        let lan = Ipv4Addr::new(10, 251, 224, 1);
        assert!(v4[2].catches(lan, 53));
        assert!(v4[1].catches(lan, 2024));
        assert!(!v4[0].catches(lan, 18080));
    }
}
