//! The multicast sockets of the sync daemons, set up as the kernel's sync threads set theirs
//! (ip_vs_sync.c `make_send_sock`, `make_receive_sock`): the master sends from its interface
//! with the configured TTL and without looping its messages back; the backup joins the group
//! on its interface and reads the port.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    os::fd::AsRawFd,
};

fn setsockopt<T>(sock: &UdpSocket, level: i32, name: i32, value: &T) -> io::Result<()> {
    // SAFETY: `value` is a valid T for the duration of the call and its size is passed.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn mreqn(group: Ipv4Addr, ifindex: u32) -> libc::ip_mreqn {
    libc::ip_mreqn {
        imr_multiaddr: libc::in_addr {
            s_addr: u32::from_ne_bytes(group.octets()),
        },
        imr_address: libc::in_addr { s_addr: 0 },
        imr_ifindex: ifindex as i32,
    }
}

/// The master's socket: sends to `group` from interface `ifindex`, `ttl` hops, no loopback.
pub fn sender(group: IpAddr, ifindex: u32, ttl: u8) -> io::Result<tokio::net::UdpSocket> {
    let sock = match group {
        IpAddr::V4(g) => {
            let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
            setsockopt(
                &s,
                libc::IPPROTO_IP,
                libc::IP_MULTICAST_IF,
                &mreqn(g, ifindex),
            )?;
            s.set_multicast_ttl_v4(u32::from(ttl))?;
            s.set_multicast_loop_v4(false)?;
            s
        }
        IpAddr::V6(_) => {
            let s = UdpSocket::bind((std::net::Ipv6Addr::UNSPECIFIED, 0))?;
            let index = ifindex as libc::c_int;
            setsockopt(&s, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_IF, &index)?;
            let hops = libc::c_int::from(ttl);
            setsockopt(&s, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_HOPS, &hops)?;
            s.set_multicast_loop_v6(false)?;
            s
        }
    };
    sock.set_nonblocking(true)?;
    tokio::net::UdpSocket::from_std(sock)
}

/// The backup's receive buffer, bytes: about 100,000 IPv4 entries waiting.
const RECEIVE_BUFFER: libc::c_int = 4 << 20;

/// The backup's socket: bound to `group`'s `port` (only that group's datagrams), member of
/// `group` on interface `ifindex`.
pub fn receiver(group: IpAddr, port: u16, ifindex: u32) -> io::Result<tokio::net::UdpSocket> {
    let domain = if group.is_ipv6() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    // Made by hand: SO_REUSEADDR must be set before the bind (a master on the same host, or a
    // restarted xvsd whose old socket lingers, may hold the port).
    // SAFETY: a plain socket(2) call; the descriptor is owned right away.
    let fd = unsafe { libc::socket(domain, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new, valid descriptor nobody else owns.
    let sock = unsafe { <UdpSocket as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    setsockopt(&sock, libc::SOL_SOCKET, libc::SO_REUSEADDR, &one)?;
    // Room for a peer's whole table arriving in bursts (lb_core::sync::table): past
    // net.core.rmem_max when xvsd may (CAP_NET_ADMIN), else as large as that allows.
    let room: libc::c_int = RECEIVE_BUFFER;
    if setsockopt(&sock, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &room).is_err() {
        let _ = setsockopt(&sock, libc::SOL_SOCKET, libc::SO_RCVBUF, &room);
    }
    let addr = SocketAddr::new(group, port);
    let (storage, len) = sockaddr(&addr);
    // SAFETY: `storage` holds a valid sockaddr of `len` bytes.
    if unsafe { libc::bind(fd, (&storage as *const libc::sockaddr_storage).cast(), len) } < 0 {
        return Err(io::Error::last_os_error());
    }
    match group {
        IpAddr::V4(g) => setsockopt(
            &sock,
            libc::IPPROTO_IP,
            libc::IP_ADD_MEMBERSHIP,
            &mreqn(g, ifindex),
        )?,
        IpAddr::V6(g) => sock.join_multicast_v6(&g, ifindex)?,
    }
    sock.set_nonblocking(true)?;
    tokio::net::UdpSocket::from_std(sock)
}

fn sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in6 and suitably aligned.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}
