//! Dumping TCP sockets through netlink `sock_diag` (what `ss -tan` reads), so the state
//! gauges are right for sockets that existed before the agent started, TIME_WAIT
//! mini-sockets included. `census.rs` counts what the dump returns.
//!
//! netlink-packet-sock-diag builds the request and parses each answer (the fixed
//! `inet_diag_msg` and its attributes), netlink-sys owns the socket. The one thing we
//! read by hand is `struct tcp_info` in the INET_DIAG_INFO attribute: the crate's typed
//! parse (`rich_nlas`) wants the whole struct up to `tcpi_snd_wnd` (232 bytes, Linux
//! 5.19+) and fails the socket's whole message on shorter ones, as 5.10 sends.
use anyhow::{bail, Context as _, Result};
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::{
    constants::IPPROTO_TCP,
    inet::{nlas::Nla, ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags},
    SockDiagMessage,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};

/// The fixed part of every answer (`struct inet_diag_msg`), as the crate parses it:
/// family, state, pending timer, endpoints (`socket_id`, ports in host order), queues
/// (`recv_queue`/`send_queue`: for a listener, the accept queue's length and backlog),
/// `uid` and `inode`.
pub use netlink_packet_sock_diag::inet::{InetResponseHeader as InetDiagMsg, Timer};

/// What the agent reads of a socket's `struct tcp_info` (the INET_DIAG_INFO attribute).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpInfo {
    /// Retransmission timeouts since the last ACK that advanced (`tcpi_retransmits`).
    pub retransmits: u8,
    /// Current retransmission timeout, microseconds.
    pub rto_us: u32,
    /// Milliseconds since the socket last sent / received data.
    pub last_data_sent_ms: u32,
    pub last_data_recv_ms: u32,
    /// Smoothed round trip time and its variation, microseconds.
    pub rtt_us: u32,
    pub rttvar_us: u32,
    /// Segments retransmitted over the socket's life.
    pub total_retrans: u32,
    /// Bytes the peer acknowledged / bytes received (RFC 4898; Linux 4.1+).
    pub bytes_acked: u64,
    pub bytes_received: u64,
}

impl TcpInfo {
    /// Offsets in `struct tcp_info` (uapi/linux/tcp.h): fields are only ever appended,
    /// so each keeps its offset; a shorter attribute than we read is refused.
    pub fn parse(bytes: &[u8]) -> Option<TcpInfo> {
        let u32_at = |off: usize| {
            Some(u32::from_ne_bytes(
                bytes.get(off..off + 4)?.try_into().ok()?,
            ))
        };
        let u64_at = |off: usize| {
            Some(u64::from_ne_bytes(
                bytes.get(off..off + 8)?.try_into().ok()?,
            ))
        };
        Some(TcpInfo {
            retransmits: *bytes.get(2)?,
            rto_us: u32_at(8)?,
            last_data_sent_ms: u32_at(44)?,
            last_data_recv_ms: u32_at(52)?,
            rtt_us: u32_at(68)?,
            rttvar_us: u32_at(72)?,
            total_retrans: u32_at(100)?,
            bytes_acked: u64_at(120)?,
            bytes_received: u64_at(128)?,
        })
    }
}

/// Dump every TCP socket of one address family in the caller's network namespace,
/// handing each one's fixed header to `visit`.
pub fn dump_tcp(family: u8, mut visit: impl FnMut(&InetDiagMsg)) -> Result<()> {
    dump(family, ExtensionFlags::empty(), |s| visit(&s.header))
}

/// `dump_tcp` with each socket's `tcp_info` (absent for TIME_WAIT and request sockets).
pub fn dump_tcp_with_info(
    family: u8,
    mut visit: impl FnMut(&InetDiagMsg, Option<TcpInfo>),
) -> Result<()> {
    dump(family, ExtensionFlags::INFO, |s| {
        visit(&s.header, tcp_info(s))
    })
}

/// The socket's `tcp_info`, where the kernel sent one.
fn tcp_info(s: &InetResponse) -> Option<TcpInfo> {
    s.nlas.iter().find_map(|nla| match nla {
        Nla::TcpInfo(bytes) => TcpInfo::parse(bytes),
        _ => None,
    })
}

fn dump(family: u8, ext: ExtensionFlags, mut visit: impl FnMut(&InetResponse)) -> Result<()> {
    let socket = Socket::new(NETLINK_SOCK_DIAG).context("opening a sock_diag netlink socket")?;
    send_request(&socket, family, ext)?;
    // Dump answers come in datagrams of at most a page or so; 64 KiB holds any of them.
    let mut buf = Vec::with_capacity(64 * 1024);
    loop {
        buf.clear();
        let n = socket
            .recv(&mut buf, 0)
            .context("reading sock_diag answers")?;
        if visit_datagram(&buf[..n.min(buf.len())], &mut visit)? {
            return Ok(());
        }
    }
}

fn send_request(socket: &Socket, family: u8, ext: ExtensionFlags) -> Result<()> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = 1;
    let mut socket_id = SocketId::new_v4();
    if family == libc::AF_INET6 as u8 {
        socket_id = SocketId::new_v6();
    }
    let request = SockDiagMessage::InetRequest(InetRequest {
        family,
        protocol: IPPROTO_TCP,
        extensions: ext,
        // Every state bit, as `ss -a` asks: the crate's `all()` stops at TCP_CLOSING
        // and would leave out request sockets (TCP_NEW_SYN_RECV).
        states: StateFlags::from_bits_retain(u32::MAX),
        socket_id,
    });
    let mut packet = NetlinkMessage::new(header, request.into());
    packet.finalize();
    let mut bytes = vec![0; packet.buffer_len()];
    packet.serialize(&mut bytes);
    socket
        .send_to(&bytes, &SocketAddr::new(0, 0), 0)
        .context("sending the sock_diag request")?;
    Ok(())
}

/// Hand each socket of one datagram to `visit`; true once the dump is done.
fn visit_datagram(mut data: &[u8], visit: &mut impl FnMut(&InetResponse)) -> Result<bool> {
    while !data.is_empty() {
        let msg = NetlinkMessage::<SockDiagMessage>::deserialize(data)
            .context("malformed sock_diag answer")?;
        match msg.payload {
            NetlinkPayload::Done(_) => return Ok(true),
            NetlinkPayload::Error(e) => bail!("sock_diag dump failed: {}", e.to_io()),
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(s)) => visit(&s),
            _ => {}
        }
        // Messages are padded to 4 bytes (NLMSG_ALIGN).
        let len = (msg.header.length as usize + 3) & !3;
        data = data.get(len.max(1)..).unwrap_or_default();
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        io::{Read as _, Write as _},
        net::{TcpListener, TcpStream},
        process::Command,
        time::Duration,
    };

    const LISTEN: u8 = 10;
    const ESTABLISHED: u8 = 1;

    #[test]
    fn counts_a_listening_socket_of_our_own() {
        // sock_diag needs no privileges for reading the caller's namespace.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut found = false;
        dump_tcp(libc::AF_INET as u8, |s| {
            if s.socket_id.source_port == port && s.state == LISTEN {
                found = true;
            }
        })
        .unwrap();
        assert!(found, "listener on port {port} not in the dump");
    }

    #[test]
    fn tcp_info_of_an_idle_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let _client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let mut idle = None;
        dump_tcp_with_info(libc::AF_INET as u8, |s, info| {
            if s.socket_id.destination_port == port && s.state == ESTABLISHED {
                idle = info;
            }
        })
        .unwrap();
        let info = idle.expect("the client socket, with tcp_info");
        assert!(info.last_data_sent_ms >= 250, "{info:?}");
        assert!(info.rto_us >= 200_000, "{info:?}");
    }

    #[test]
    fn ipv6_sockets_have_v6_endpoints() {
        let Ok(listener) = TcpListener::bind("[::1]:0") else {
            eprintln!("skipped: no IPv6 loopback");
            return;
        };
        let port = listener.local_addr().unwrap().port();
        let mut found = None;
        dump_tcp(libc::AF_INET6 as u8, |s| {
            if s.socket_id.source_port == port {
                found = Some(s.socket_id.source_address);
            }
        })
        .unwrap();
        assert_eq!(found, Some("::1".parse().unwrap()));
    }

    /// `ss -tinHe` (with `-l`, listeners only) for sockets matching `filter`.
    fn ss(listening: bool, filter: &str) -> String {
        let out = Command::new("ss")
            .arg(if listening { "-tinHel" } else { "-tinHe" })
            .arg(filter)
            .output()
            .expect("run ss (iproute2)");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    /// The number after `key` in ss's output (`key` includes its separator).
    fn ss_field(text: &str, key: &str) -> u64 {
        let at = text
            .find(key)
            .unwrap_or_else(|| panic!("no {key} in {text}"))
            + key.len();
        let digits: String = text[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().unwrap_or_else(|_| panic!("{key} in {text}"))
    }

    #[test]
    fn listener_queues_match_ss() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        // Two connections wait in the accept queue: Recv-Q 2, Send-Q the backlog.
        let _a = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _b = TcpStream::connect(("127.0.0.1", port)).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let mut mine = None;
        dump_tcp(libc::AF_INET as u8, |s| {
            if s.socket_id.source_port == port && s.state == LISTEN {
                mine = Some(s.clone());
            }
        })
        .unwrap();
        let mine = mine.expect("our listener");
        let line = ss(true, &format!("sport = :{port}"));
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols[0], "LISTEN", "{line}");
        assert_eq!(mine.recv_queue, 2);
        assert_eq!(cols[1], mine.recv_queue.to_string(), "{line}");
        assert_eq!(cols[2], mine.send_queue.to_string(), "{line}");
        assert_eq!(ss_field(&line, "ino:"), u64::from(mine.inode), "{line}");
        // ss leaves out `uid:` when it is 0: compare with ours instead.
        // SAFETY: geteuid cannot fail.
        assert_eq!(mine.uid, unsafe { libc::geteuid() });
    }

    #[test]
    fn connection_tcp_info_matches_ss() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        client.write_all(&[7; 10_000]).unwrap();
        server.read_exact(&mut [0; 10_000]).unwrap();
        server.write_all(&[9; 300]).unwrap();
        client.read_exact(&mut [0; 300]).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let local = client.local_addr().unwrap().port();
        let mut found = None;
        dump_tcp_with_info(libc::AF_INET as u8, |s, info| {
            if s.socket_id.source_port == local && s.socket_id.destination_port == port {
                found = Some((s.inode, info.expect("tcp_info of an established socket")));
            }
        })
        .unwrap();
        let (inode, info) = found.expect("our client socket");
        let line = ss(false, &format!("sport = :{local} and dport = :{port}"));
        assert_eq!(ss_field(&line, "ino:"), u64::from(inode), "{line}");
        assert_eq!(ss_field(&line, "bytes_acked:"), info.bytes_acked, "{line}");
        assert_eq!(
            ss_field(&line, "bytes_received:"),
            info.bytes_received,
            "{line}"
        );
        // The payload and the handshake's SYN (acked as one byte).
        assert_eq!(info.bytes_acked, 10_001);
        assert_eq!(info.bytes_received, 300);
        assert_eq!(
            ss_field(&line, "rto:"),
            u64::from(info.rto_us / 1000),
            "{line}"
        );
    }
}
