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
    pub hostname: Option<String>,
    server: Option<Ipv4Addr>,
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

/// A BOOTREPLY to `xid`: its message type and the lease it describes.
fn parse(p: &[u8], xid: u32) -> Option<(u8, Lease)> {
    if p.len() < 240 || p[0] != 2 || p[4..8] != xid.to_be_bytes() || p[236..240] != MAGIC {
        return None;
    }
    let mut lease = Lease {
        address: Ipv4Addr::new(p[16], p[17], p[18], p[19]),
        prefix: 24,
        gateway: None,
        hostname: None,
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
            12 => lease.hostname = Some(String::from_utf8_lossy(value).into_owned()),
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
}
