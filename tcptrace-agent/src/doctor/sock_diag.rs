//! Dumping TCP sockets through netlink `sock_diag` (what `ss -tan` reads), so the state
//! gauges are right for sockets that existed before the agent started, TIME_WAIT
//! mini-sockets included. `census.rs` counts what the dump returns.
use std::{io, mem::size_of};

use anyhow::{bail, Context as _, Result};

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct NlMsgHdr {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct InetDiagSockId {
    sport: u16,
    dport: u16,
    src: [u32; 4],
    dst: [u32; 4],
    interface: u32,
    cookie: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct InetDiagReqV2 {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: InetDiagSockId,
}

/// The fixed part of every answer (`struct inet_diag_msg`).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct InetDiagMsg {
    pub family: u8,
    pub state: u8,
    pub timer: u8,
    pub retrans: u8,
    pub id_sport_be: u16,
    pub id_dport_be: u16,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub interface: u32,
    pub cookie: [u32; 2],
    pub expires: u32,
    pub rqueue: u32,
    pub wqueue: u32,
    pub uid: u32,
    pub inode: u32,
}

/// What doctor needs from a socket's `struct tcp_info` (the INET_DIAG_INFO attribute).
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpInfo {
    /// Current retransmission timeout, microseconds.
    pub rto_us: u32,
    /// Milliseconds since the socket last sent / received data.
    pub last_data_sent_ms: u32,
    pub last_data_recv_ms: u32,
}

/// `idiag_timer`: which timer is pending on the socket.
pub const TIMER_RETRANSMIT: u8 = 1;
pub const TIMER_KEEPALIVE: u8 = 2;

const INET_DIAG_INFO: u16 = 2;

impl TcpInfo {
    /// Offsets in `struct tcp_info` (uapi/linux/tcp.h; stable since 2.6).
    fn parse(bytes: &[u8]) -> Option<TcpInfo> {
        let u32_at = |off: usize| -> Option<u32> {
            Some(u32::from_ne_bytes(
                bytes.get(off..off + 4)?.try_into().ok()?,
            ))
        };
        Some(TcpInfo {
            rto_us: u32_at(8)?,
            last_data_sent_ms: u32_at(44)?,
            last_data_recv_ms: u32_at(52)?,
        })
    }
}

/// Dump every TCP socket of one address family in the caller's network namespace,
/// handing each one's fixed header to `visit`.
pub fn dump_tcp(family: u8, mut visit: impl FnMut(&InetDiagMsg)) -> Result<()> {
    dump(family, false, |msg, _| visit(msg))
}

/// `dump_tcp` with each socket's `tcp_info` (absent for TIME_WAIT and request sockets).
pub fn dump_tcp_with_info(
    family: u8,
    visit: impl FnMut(&InetDiagMsg, Option<TcpInfo>),
) -> Result<()> {
    dump(family, true, visit)
}

fn dump(
    family: u8,
    with_info: bool,
    mut visit: impl FnMut(&InetDiagMsg, Option<TcpInfo>),
) -> Result<()> {
    let fd = Netlink::open()?;
    let req = Request {
        hdr: NlMsgHdr {
            len: size_of::<Request>() as u32,
            kind: SOCK_DIAG_BY_FAMILY,
            flags: NLM_F_REQUEST | NLM_F_DUMP,
            seq: 1,
            pid: 0,
        },
        body: InetDiagReqV2 {
            family,
            protocol: libc::IPPROTO_TCP as u8,
            ext: if with_info {
                1 << (INET_DIAG_INFO - 1)
            } else {
                0
            },
            states: !0,
            ..Default::default()
        },
    };
    fd.send(&req)?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = fd.recv(&mut buf)?;
        let mut off = 0;
        while off + size_of::<NlMsgHdr>() <= n {
            let hdr: NlMsgHdr = read_struct(&buf[off..]).context("short netlink header")?;
            let len = hdr.len as usize;
            if len < size_of::<NlMsgHdr>() || off + len > n {
                bail!("malformed netlink message (length {len})");
            }
            match hdr.kind {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    let errno: i32 = read_struct(&buf[off + size_of::<NlMsgHdr>()..]).unwrap_or(0);
                    bail!(
                        "sock_diag dump failed: {}",
                        io::Error::from_raw_os_error(-errno)
                    );
                }
                _ => {
                    let payload = &buf[off + size_of::<NlMsgHdr>()..off + len];
                    if let Some(msg) = read_struct::<InetDiagMsg>(payload) {
                        let attrs = payload.get(size_of::<InetDiagMsg>()..).unwrap_or(&[]);
                        visit(
                            &msg,
                            find_attr(attrs, INET_DIAG_INFO).and_then(TcpInfo::parse),
                        );
                    }
                }
            }
            off += (len + 3) & !3;
        }
    }
}

/// The payload of the first netlink attribute of `kind` (`struct rtattr` list).
fn find_attr(mut attrs: &[u8], kind: u16) -> Option<&[u8]> {
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let ty = u16::from_ne_bytes([attrs[2], attrs[3]]);
        if len < 4 || len > attrs.len() {
            return None;
        }
        if ty == kind {
            return Some(&attrs[4..len]);
        }
        attrs = attrs.get((len + 3) & !3..)?;
    }
    None
}

#[repr(C)]
struct Request {
    hdr: NlMsgHdr,
    body: InetDiagReqV2,
}

fn read_struct<T: Copy>(bytes: &[u8]) -> Option<T> {
    (bytes.len() >= size_of::<T>()).then(|| {
        // SAFETY: length checked; T is a plain C struct of integers.
        unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) }
    })
}

struct Netlink(std::os::fd::OwnedFd);

impl Netlink {
    fn open() -> Result<Netlink> {
        // SAFETY: plain socket(2); the fd is owned right away.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error()).context("opening a sock_diag netlink socket");
        }
        // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
        Ok(Netlink(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }))
    }

    fn raw(&self) -> i32 {
        std::os::fd::AsRawFd::as_raw_fd(&self.0)
    }

    fn send(&self, req: &Request) -> Result<()> {
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: req and addr are valid for their sizes during the call.
        let rc = unsafe {
            libc::sendto(
                self.raw(),
                (req as *const Request).cast(),
                size_of::<Request>(),
                0,
                (&addr as *const libc::sockaddr_nl).cast(),
                size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error()).context("sending the sock_diag request");
        }
        Ok(())
    }

    fn recv(&self, buf: &mut [u8]) -> Result<usize> {
        // SAFETY: buf is valid for writes of its length.
        let n = unsafe { libc::recv(self.raw(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error()).context("reading sock_diag answers");
        }
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_kernel_uapi() {
        assert_eq!(size_of::<NlMsgHdr>(), 16);
        assert_eq!(size_of::<InetDiagSockId>(), 48);
        assert_eq!(size_of::<InetDiagReqV2>(), 56);
        assert_eq!(size_of::<InetDiagMsg>(), 72);
    }

    #[test]
    fn counts_a_listening_socket_of_our_own() {
        // sock_diag needs no privileges for reading the caller's namespace.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut found = false;
        dump_tcp(libc::AF_INET as u8, |s| {
            if u16::from_be(s.id_sport_be) == port && s.state == 10 {
                found = true;
            }
        })
        .unwrap();
        assert!(found, "listener on port {port} not in the dump");
    }

    #[test]
    fn tcp_info_of_an_idle_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let mut idle = None;
        dump_tcp_with_info(libc::AF_INET as u8, |s, info| {
            if u16::from_be(s.id_dport_be) == port && s.state == 1 {
                idle = info;
            }
        })
        .unwrap();
        let info = idle.expect("the client socket, with tcp_info");
        assert!(info.last_data_sent_ms >= 250, "{info:?}");
        assert!(info.rto_us >= 200_000, "{info:?}");
    }
}
