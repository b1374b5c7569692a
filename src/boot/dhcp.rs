//! A minimal DHCPv4 client (RFC 2131): DISCOVER, OFFER, REQUEST, ACK over a broadcast UDP socket.
//! Enough to reach a store; leases are not renewed, because the normal OS takes over minutes later.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

const MAGIC: [u8; 4] = [99, 130, 83, 99];
const DISCOVER: u8 = 1;
const OFFER: u8 = 2;
const REQUEST: u8 = 3;
const ACK: u8 = 5;
const NAK: u8 = 6;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    /// Option 12, when it is a valid hostname (see [`hostname`]).
    pub hostname: Option<String>,
    /// Why option 12 was cut or left out: a warning for the console.
    pub hostname_warning: Option<String>,
    server: Option<Ipv4Addr>,
}

/// The longest hostname the kernel accepts (`HOST_NAME_MAX`); `sethostname` refuses a longer one.
pub const HOSTNAME_MAX: usize = 64;

/// Option 12 as a hostname `sethostname` and Kubernetes accept: RFC 1123 labels (letters, digits,
/// inner hyphens, 1–63 bytes each) joined by dots, at most [`HOSTNAME_MAX`] bytes. Trailing NULs and a
/// trailing dot (servers that count C's terminator, or send a rooted name) are dropped; a longer name
/// is cut to its first label. Anything else is not a hostname: `Err` says why, and the caller keeps
/// the name it has rather than stop a recovery over what a broken or hostile DHCP server sent.
pub fn hostname(raw: &[u8]) -> Result<String, String> {
    let text = std::str::from_utf8(trim(raw)).map_err(|_| "it is not ASCII".to_string())?;
    if text.is_empty() {
        return Err("it is empty".into());
    }
    for label in text.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!(
                "a label is {} bytes long, not 1 to 63",
                label.len()
            ));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Err(format!(
                "it holds {c:?}; only letters, digits, '-' and '.' are allowed"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label starts or ends with '-'".into());
        }
    }
    if text.len() <= HOSTNAME_MAX {
        return Ok(text.to_string());
    }
    // A label is at most 63 bytes, so the first one always fits.
    Ok(text.split('.').next().unwrap_or_default().to_string())
}

/// Option 12 as the lease's hostname and, when it was cut or left out, a warning saying why.
fn option12(value: &[u8]) -> (Option<String>, Option<String>) {
    let shown = String::from_utf8_lossy(value).escape_debug().to_string();
    match hostname(value) {
        Ok(name) if name.len() < trim(value).len() => {
            let why = format!(
                "the DHCP hostname \"{shown}\" is longer than {HOSTNAME_MAX} bytes; using its first label, {name}"
            );
            (Some(name), Some(why))
        }
        Ok(name) => (Some(name), None),
        Err(why) => {
            let why = format!(
                "ignoring the DHCP hostname \"{shown}\": {why}. Fix option 12 on the DHCP server, or name this machine with cpr.hostname=NAME on the kernel command line"
            );
            (None, Some(why))
        }
    }
}

/// Option 12 without trailing NULs and without a trailing dot.
fn trim(raw: &[u8]) -> &[u8] {
    let mut end = raw.len();
    while end > 0 && raw[end - 1] == 0 {
        end -= 1;
    }
    raw[..end].strip_suffix(b".").unwrap_or(&raw[..end])
}

/// Obtains a lease for the NIC with hardware address `mac`, sending to `server` (the broadcast
/// address on a real network). DISCOVER is repeated every `retry` until `timeout` has passed.
pub fn acquire(
    socket: &UdpSocket,
    server: SocketAddr,
    mac: [u8; 6],
    retry: Duration,
    timeout: Duration,
) -> io::Result<Lease> {
    let deadline = Instant::now() + timeout;
    let xid = transaction_id(mac);
    while Instant::now() < deadline {
        socket.send_to(&packet(DISCOVER, xid, mac, None), server)?;
        let Some(offer) = receive(socket, xid, OFFER, Instant::now() + retry)? else {
            continue;
        };
        socket.send_to(&packet(REQUEST, xid, mac, Some(&offer)), server)?;
        if let Some(ack) = receive(socket, xid, ACK, Instant::now() + retry)? {
            return Ok(ack);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("no DHCP server answered within {} s", timeout.as_secs()),
    ))
}

/// Different NICs and boots pick different transaction ids without needing a random source.
fn transaction_id(mac: [u8; 6]) -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]) ^ nanos
}

fn packet(kind: u8, xid: u32, mac: [u8; 6], offer: Option<&Lease>) -> Vec<u8> {
    let mut p = vec![0u8; 236];
    p[0] = 1; // BOOTREQUEST
    p[1] = 1; // Ethernet
    p[2] = 6;
    p[4..8].copy_from_slice(&xid.to_be_bytes());
    // Broadcast flag: the client has no address yet to receive a unicast reply on.
    p[10] = 0x80;
    p[28..34].copy_from_slice(&mac);
    p.extend_from_slice(&MAGIC);
    p.extend_from_slice(&[53, 1, kind]);
    if let Some(offer) = offer {
        p.extend_from_slice(&[50, 4]);
        p.extend_from_slice(&offer.address.octets());
        if let Some(server) = offer.server {
            p.extend_from_slice(&[54, 4]);
            p.extend_from_slice(&server.octets());
        }
    }
    // Parameter request list: subnet mask, router, hostname.
    p.extend_from_slice(&[55, 3, 1, 3, 12, 255]);
    p
}

/// Waits until `deadline` for a reply of type `kind` to transaction `xid`; others are skipped.
fn receive(socket: &UdpSocket, xid: u32, kind: u8, deadline: Instant) -> io::Result<Option<Lease>> {
    let mut buffer = [0u8; 1500];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        socket.set_read_timeout(Some(left))?;
        let length = match socket.recv(&mut buffer) {
            Ok(length) => length,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        match parse(&buffer[..length], xid) {
            Some((NAK, _)) => {
                return Err(io::Error::other(
                    "the DHCP server refused the request (NAK)",
                ))
            }
            Some((got, lease)) if got == kind => return Ok(Some(lease)),
            _ => {}
        }
    }
}

/// A BOOTREPLY to `xid`: its message type and the lease it describes. `None` for anything else,
/// however malformed; never a panic (fuzzed: `fuzz/fuzz_targets/dhcp.rs`).
pub fn parse(p: &[u8], xid: u32) -> Option<(u8, Lease)> {
    if p.len() < 240 || p[0] != 2 || p[4..8] != xid.to_be_bytes() || p[236..240] != MAGIC {
        return None;
    }
    let mut lease = Lease {
        address: Ipv4Addr::new(p[16], p[17], p[18], p[19]),
        prefix: 24,
        gateway: None,
        hostname: None,
        hostname_warning: None,
        server: None,
    };
    let mut kind = None;
    let mut i = 240;
    while i < p.len() && p[i] != 255 {
        if p[i] == 0 {
            i += 1;
            continue;
        }
        let len = *p.get(i + 1)? as usize;
        let value = p.get(i + 2..i + 2 + len)?;
        let ipv4 = || (len >= 4).then(|| Ipv4Addr::new(value[0], value[1], value[2], value[3]));
        match p[i] {
            1 => lease.prefix = ipv4().map(|m| u32::from(m).count_ones() as u8)?,
            3 => lease.gateway = ipv4(),
            12 => (lease.hostname, lease.hostname_warning) = option12(value),
            53 => kind = value.first().copied(),
            54 => lease.server = ipv4(),
            _ => {}
        }
        i += 2 + len;
    }
    Some((kind?, lease))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DHCP server on loopback that answers like QEMU's: OFFER then ACK of 10.0.2.15.
    fn serve(server: UdpSocket, ignore_first: bool) {
        let mut buffer = [0u8; 1500];
        let mut ignored = !ignore_first;
        loop {
            let Ok((length, from)) = server.recv_from(&mut buffer) else {
                return;
            };
            let request = &buffer[..length];
            let kind = request[242];
            if !ignored {
                ignored = true;
                continue;
            }
            let mut reply = request[..236].to_vec();
            reply[0] = 2;
            reply[16..20].copy_from_slice(&[10, 0, 2, 15]);
            reply.extend_from_slice(&MAGIC);
            let answer = if kind == DISCOVER { OFFER } else { ACK };
            reply.extend_from_slice(&[53, 1, answer, 1, 4, 255, 255, 255, 0, 3, 4, 10, 0, 2, 2]);
            reply.extend_from_slice(&[54, 4, 10, 0, 2, 2, 12, 7]);
            reply.extend_from_slice(b"master0");
            reply.extend_from_slice(&[0, 255]);
            if kind == REQUEST {
                assert_eq!(
                    &request[243..249],
                    &[50, 4, 10, 0, 2, 15],
                    "REQUEST names the offer"
                );
            }
            server.send_to(&reply, from).unwrap();
            if kind == REQUEST {
                return;
            }
        }
    }

    fn lease(ignore_first: bool) -> io::Result<Lease> {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let address = server.local_addr().unwrap();
        let thread = std::thread::spawn(move || serve(server, ignore_first));
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        let lease = acquire(
            &client,
            address,
            mac,
            Duration::from_millis(300),
            Duration::from_secs(5),
        );
        thread.join().unwrap();
        lease
    }

    #[test]
    fn obtains_address_prefix_gateway_and_hostname() {
        let lease = lease(false).unwrap();
        assert_eq!(lease.address, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(lease.prefix, 24);
        assert_eq!(lease.gateway, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(lease.hostname.as_deref(), Some("master0"));
    }

    #[test]
    fn repeats_a_discover_that_got_no_answer() {
        assert_eq!(lease(true).unwrap().address, Ipv4Addr::new(10, 0, 2, 15));
    }

    #[test]
    fn gives_up_with_a_message_when_nobody_answers() {
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        let error = acquire(
            &client,
            silent.local_addr().unwrap(),
            [0; 6],
            Duration::from_millis(100),
            Duration::from_millis(300),
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("no DHCP server answered"),
            "{error}"
        );
    }

    #[test]
    fn ignores_replies_to_other_transactions_and_truncated_options() {
        let mut reply = packet(DISCOVER, 7, [1; 6], None);
        reply[0] = 2;
        assert!(parse(&reply, 8).is_none());
        assert_eq!(parse(&reply, 7).map(|(kind, _)| kind), Some(DISCOVER));
        let truncated = &reply[..reply.len() - 4];
        assert!(parse(truncated, 7).is_none());
    }

    /// An ACK to transaction 7 whose option 12 is `name`.
    fn ack_naming(name: &[u8]) -> Option<Lease> {
        let mut reply = packet(DISCOVER, 7, [1; 6], None);
        reply[0] = 2;
        reply.truncate(240);
        reply.extend_from_slice(&[53, 1, ACK, 12, name.len() as u8]);
        reply.extend_from_slice(name);
        reply.push(255);
        parse(&reply, 7).map(|(_, lease)| lease)
    }

    #[test]
    fn a_hostname_with_the_c_terminator_loses_it() {
        let lease = ack_naming(b"master0\0").unwrap();
        assert_eq!(lease.hostname.as_deref(), Some("master0"));
        assert_eq!(lease.hostname_warning, None);
        let rooted = ack_naming(b"master0.example.com.").unwrap();
        assert_eq!(rooted.hostname.as_deref(), Some("master0.example.com"));
    }

    #[test]
    fn a_name_longer_than_the_kernel_takes_is_cut_to_its_first_label() {
        let long = format!("master0.{}.example.com", ["zone-a"; 10].join("."));
        assert!(long.len() > HOSTNAME_MAX);
        let lease = ack_naming(long.as_bytes()).unwrap();
        assert_eq!(lease.hostname.as_deref(), Some("master0"));
        let warning = lease.hostname_warning.unwrap();
        assert!(
            warning.contains("is longer than 64 bytes; using its first label, master0"),
            "{warning}"
        );
    }

    #[test]
    fn a_hostname_that_is_not_one_is_ignored_with_a_warning_and_the_lease_kept() {
        for (name, why) in [
            (
                &b"m"[..].repeat(100)[..],
                "a label is 100 bytes long, not 1 to 63",
            ),
            (
                b"mas\0ter0",
                "it holds '\\0'; only letters, digits, '-' and '.' are allowed",
            ),
            (b"master0;reboot", "it holds ';'"),
            (b"-master0", "a label starts or ends with '-'"),
            (b"master..example", "a label is 0 bytes long"),
            (b"\xff\xfe", "it is not ASCII"),
            (b"\0\0", "it is empty"),
        ] {
            let lease = ack_naming(name).expect("the lease itself is kept");
            assert_eq!(lease.hostname, None, "{name:?}");
            let warning = lease.hostname_warning.unwrap();
            assert!(
                warning.contains(why) && warning.contains("ignoring the DHCP hostname"),
                "{warning}"
            );
            assert!(
                warning.contains("cpr.hostname=NAME on the kernel command line"),
                "{warning}"
            );
        }
    }
}
