//! The test server behind the `weir-test-server` binary: HTTP/1.1 answering every GET
//! with `200` and body `NAME\n` (keep-alive; `GET /forwarded` adds the request's
//! `X-Forwarded-*` header lines and the connection's PROXY v2 addresses, for proxies in
//! front of it; `GET /hang` is never answered, for their response timeouts), and UDP echo answering each datagram with
//! `NAME ` + the datagram. Plain threads, one per TCP connection and one per UDP socket.
//!
//! Made for direct server return: wildcard UDP sockets answer from the address the
//! datagram was sent to (IP_PKTINFO / IPV6_PKTINFO), so a backend holding a VIP on its
//! loopback answers from the VIP; IPv6 wildcard sockets are IPv6-only, so `0.0.0.0:P` and
//! `[::]:P` can both be bound.

use std::{
    io::{self, BufRead, Read, Write},
    mem,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    sync::Arc,
    thread,
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};

/// What the server prints on stdout once every socket is bound.
pub const READY: &str = "weir-test-server ready";

/// Limits that keep a bad client from hurting the server.
const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 1024 * 1024;
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The server's command line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerConfig {
    /// Its answer: HTTP body `NAME\n`, UDP prefix `NAME `.
    pub name: String,
    pub http: Vec<SocketAddr>,
    pub udp: Vec<SocketAddr>,
    /// While this file exists, every HTTP request is answered `503 Service Unavailable`
    /// (a backend failing its health check while still accepting connections).
    pub unavailable_when: Option<PathBuf>,
}

pub const USAGE: &str = "\
usage: weir-test-server --name NAME [--http ADDR:PORT]... [--udp ADDR:PORT]...
                        [--unavailable-when FILE]

Serves HTTP/1.1 (every GET gets 200 and body \"NAME\\n\") and UDP echo (each datagram is
answered with \"NAME \" + the datagram) on every given address, e.g.
  weir-test-server --name b1 --http 0.0.0.0:80 --http [::]:80 --udp 0.0.0.0:5300
While FILE exists, HTTP requests are answered 503 Service Unavailable.
Prints \"weir-test-server ready\" once every socket is bound.";

impl ServerConfig {
    /// Parses the arguments after the program name.
    pub fn from_args<I, S>(args: I) -> Result<ServerConfig>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut config = ServerConfig::default();
        let mut args = args.into_iter().map(Into::into);
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) if flag.starts_with("--") => {
                    (flag.to_owned(), Some(value.to_owned()))
                }
                _ => (arg.clone(), None),
            };
            let mut value = || -> Result<String> {
                inline
                    .clone()
                    .or_else(|| args.next())
                    .with_context(|| format!("{flag} needs a value"))
            };
            match flag.as_str() {
                "--name" => config.name = value()?,
                "--http" => config.http.push(parse_addr(&value()?)?),
                "--udp" => config.udp.push(parse_addr(&value()?)?),
                "--unavailable-when" => config.unavailable_when = Some(PathBuf::from(value()?)),
                _ => bail!("unknown argument {arg:?}"),
            }
        }
        ensure!(!config.name.is_empty(), "--name is required");
        ensure!(
            !config.http.is_empty() || !config.udp.is_empty(),
            "give at least one --http or --udp address"
        );
        Ok(config)
    }

    /// The arguments that [`ServerConfig::from_args`] parses back into `self`.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec!["--name".to_owned(), self.name.clone()];
        for addr in &self.http {
            args.extend(["--http".to_owned(), addr.to_string()]);
        }
        for addr in &self.udp {
            args.extend(["--udp".to_owned(), addr.to_string()]);
        }
        if let Some(path) = &self.unavailable_when {
            args.extend(["--unavailable-when".to_owned(), path.display().to_string()]);
        }
        args
    }
}

fn parse_addr(s: &str) -> Result<SocketAddr> {
    s.parse()
        .with_context(|| format!("bad address {s:?}: use ADDR:PORT or [ADDR6]:PORT"))
}

/// Binds every socket of `config`, prints [`READY`] and serves until the process ends.
pub fn serve(config: &ServerConfig) -> Result<()> {
    let name: Arc<str> = Arc::from(config.name.as_str());
    let unavailable_when: Arc<Option<PathBuf>> = Arc::new(config.unavailable_when.clone());
    let mut workers = Vec::new();
    for &addr in &config.http {
        let listener = bind_tcp(addr)?;
        let name = name.clone();
        let unavailable_when = unavailable_when.clone();
        workers.push(thread::spawn(move || {
            accept_loop(listener, name, unavailable_when)
        }));
    }
    for &addr in &config.udp {
        let socket = bind_udp(addr)?;
        let name = name.clone();
        workers.push(thread::spawn(move || udp_loop(socket, addr, name)));
    }
    println!("{READY}");
    io::stdout().flush()?;
    for worker in workers {
        let _ = worker.join();
    }
    Ok(())
}

fn os_err<T>(what: &str, addr: SocketAddr) -> Result<T> {
    Err(io::Error::last_os_error()).with_context(|| format!("{what} {addr}"))
}

/// A socket of `kind` for `addr`'s family; IPv6 sockets are IPv6-only.
fn socket(addr: SocketAddr, kind: libc::c_int) -> Result<OwnedFd> {
    let domain = if addr.is_ipv6() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    // SAFETY: plain socket creation.
    let fd = unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return os_err("socket for", addr);
    }
    // SAFETY: a fresh descriptor owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    set_opt(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, addr)?;
    if addr.is_ipv6() {
        set_opt(&fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, addr)?;
    }
    Ok(fd)
}

fn set_opt(fd: &OwnedFd, level: libc::c_int, opt: libc::c_int, addr: SocketAddr) -> Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: an int option of the right size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            &one as *const _ as *const libc::c_void,
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return os_err("setsockopt on socket for", addr);
    }
    Ok(())
}

fn bind(fd: &OwnedFd, addr: SocketAddr) -> Result<()> {
    let (storage, len) = to_sockaddr(addr);
    // SAFETY: `storage` holds a valid sockaddr of `len` bytes.
    if unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &storage as *const _ as *const libc::sockaddr,
            len,
        )
    } != 0
    {
        return os_err("cannot bind", addr);
    }
    Ok(())
}

/// A listening TCP socket on `addr`.
pub fn bind_tcp(addr: SocketAddr) -> Result<TcpListener> {
    let fd = socket(addr, libc::SOCK_STREAM)?;
    bind(&fd, addr)?;
    // SAFETY: a bound stream socket.
    if unsafe { libc::listen(fd.as_raw_fd(), 1024) } != 0 {
        return os_err("cannot listen on", addr);
    }
    Ok(TcpListener::from(fd))
}

/// A UDP socket bound to `addr` that reports each datagram's destination address.
pub fn bind_udp(addr: SocketAddr) -> Result<UdpSocket> {
    let fd = socket(addr, libc::SOCK_DGRAM)?;
    if addr.is_ipv6() {
        set_opt(&fd, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, addr)?;
    } else {
        set_opt(&fd, libc::IPPROTO_IP, libc::IP_PKTINFO, addr)?;
    }
    bind(&fd, addr)?;
    Ok(UdpSocket::from(fd))
}

fn to_sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr.
            let sin = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above.
            let sin6 = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_scope_id = a.scope_id();
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

fn from_sockaddr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match storage.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says this is a sockaddr_in.
            let sin = unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::new(IpAddr::V4(ip), u16::from_be(sin.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this is a sockaddr_in6.
            let sin6 = unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn accept_loop(listener: TcpListener, name: Arc<str>, unavailable_when: Arc<Option<PathBuf>>) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                let name = name.clone();
                let unavailable_when = unavailable_when.clone();
                thread::spawn(move || {
                    let _ = serve_connection(stream, &name, unavailable_when.as_deref());
                });
            }
            // Out of descriptors or similar: back off rather than spin.
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// One parsed request head.
struct Request {
    method: String,
    target: String,
    keep_alive: bool,
    content_length: usize,
    /// The `X-Forwarded-*` header lines, as received.
    forwarded: Vec<String>,
}

/// The path whose answer also shows the request's `X-Forwarded-*` headers, and the
/// addresses of the connection's PROXY v2 header (`proxy-v2: SOURCE DESTINATION`).
pub const FORWARDED_PATH: &str = "/forwarded";
/// The path whose requests are never answered (the connection is held until it idles
/// out).
pub const HANG_PATH: &str = "/hang";

fn serve_connection(
    stream: TcpStream,
    name: &str,
    unavailable_when: Option<&Path>,
) -> io::Result<()> {
    stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
    stream.set_write_timeout(Some(IDLE_TIMEOUT))?;
    let _ = stream.set_nodelay(true);
    let mut reader = io::BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let proxied = read_proxy_v2(&mut reader)?;
    let body = format!("{name}\n");
    loop {
        let request = match read_head(&mut reader) {
            Ok(Some(request)) => request,
            Ok(None) => return Ok(()),
            Err(_) => {
                let _ = respond(
                    &mut writer,
                    "400 Bad Request",
                    "bad request\n",
                    name,
                    false,
                    true,
                );
                return Ok(());
            }
        };
        if request.content_length > MAX_BODY {
            respond(
                &mut writer,
                "413 Content Too Large",
                "too large\n",
                name,
                false,
                true,
            )?;
            return Ok(());
        }
        io::copy(
            &mut (&mut reader).take(request.content_length as u64),
            &mut io::sink(),
        )?;
        let keep_alive = request.keep_alive;
        let status = if unavailable_when.is_some_and(Path::exists) {
            "503 Service Unavailable"
        } else {
            "200 OK"
        };
        if request.target == HANG_PATH {
            thread::sleep(IDLE_TIMEOUT);
            return Ok(());
        }
        let body = if request.target == FORWARDED_PATH {
            let proxied = proxied
                .map(|(source, destination)| format!("proxy-v2: {source} {destination}\n"))
                .unwrap_or_default();
            format!("{body}{}{proxied}", request.forwarded.join(""))
        } else {
            body.clone()
        };
        match request.method.as_str() {
            "GET" => respond(&mut writer, status, &body, name, keep_alive, true)?,
            "HEAD" => respond(&mut writer, status, &body, name, keep_alive, false)?,
            _ => {
                respond(
                    &mut writer,
                    "405 Method Not Allowed",
                    "GET only\n",
                    name,
                    false,
                    true,
                )?;
                return Ok(());
            }
        }
        if !keep_alive {
            return Ok(());
        }
    }
}

/// The source and destination of a PROXY protocol v2 header (TCP over IPv4 or IPv6)
/// starting the connection, consumed; `None` (nothing consumed) without one.
fn read_proxy_v2(reader: &mut impl BufRead) -> io::Result<Option<(SocketAddr, SocketAddr)>> {
    const SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
    if !reader.fill_buf()?.starts_with(SIGNATURE) {
        return Ok(None);
    }
    let mut fixed = [0u8; 16];
    reader.read_exact(&mut fixed)?;
    let mut addresses = vec![0u8; u16::from_be_bytes([fixed[14], fixed[15]]) as usize];
    reader.read_exact(&mut addresses)?;
    let port = |at: usize| u16::from_be_bytes([addresses[at], addresses[at + 1]]);
    let ends = match (fixed[13], addresses.len()) {
        (0x11, 12..) => {
            let ip = |at: usize| IpAddr::from(<[u8; 4]>::try_from(&addresses[at..at + 4]).unwrap());
            (
                SocketAddr::new(ip(0), port(8)),
                SocketAddr::new(ip(4), port(10)),
            )
        }
        (0x21, 36..) => {
            let ip =
                |at: usize| IpAddr::from(<[u8; 16]>::try_from(&addresses[at..at + 16]).unwrap());
            (
                SocketAddr::new(ip(0), port(32)),
                SocketAddr::new(ip(16), port(34)),
            )
        }
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "unsupported PROXY v2 header",
            ));
        }
    };
    Ok(Some(ends))
}

/// Reads a request head; `None` on a clean end of stream before it.
fn read_head(reader: &mut impl BufRead) -> io::Result<Option<Request>> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let mut lines = Vec::new();
    let mut total = 0;
    loop {
        let mut line = Vec::new();
        let n = reader
            .by_ref()
            .take((MAX_HEAD - total + 1) as u64)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return if lines.is_empty() {
                Ok(None)
            } else {
                Err(bad("truncated head"))
            };
        }
        total += n;
        if total > MAX_HEAD {
            return Err(bad("head too large"));
        }
        let line = String::from_utf8_lossy(&line)
            .trim_end_matches(['\r', '\n'])
            .to_owned();
        if line.is_empty() {
            if lines.is_empty() {
                continue; // tolerate blank lines between requests
            }
            break;
        }
        lines.push(line);
    }
    let mut request_line = lines[0].split_whitespace();
    let method = request_line
        .next()
        .ok_or_else(|| bad("empty request line"))?
        .to_owned();
    let target = request_line
        .next()
        .ok_or_else(|| bad("no request target"))?
        .to_owned();
    let version = request_line.next().unwrap_or("HTTP/1.0");
    let mut keep_alive = version == "HTTP/1.1";
    let mut content_length = 0;
    let mut forwarded = Vec::new();
    for header in &lines[1..] {
        let Some((key, value)) = header.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if key.to_ascii_lowercase().starts_with("x-forwarded-") {
            forwarded.push(format!("{}: {value}\n", key.to_ascii_lowercase()));
        }
        if key.eq_ignore_ascii_case("connection") {
            if value.eq_ignore_ascii_case("close") {
                keep_alive = false;
            } else if value.eq_ignore_ascii_case("keep-alive") {
                keep_alive = true;
            }
        } else if key.eq_ignore_ascii_case("content-length") {
            content_length = value.parse().map_err(|_| bad("bad content-length"))?;
        } else if key.eq_ignore_ascii_case("transfer-encoding") {
            return Err(bad("chunked requests are not supported"));
        }
    }
    Ok(Some(Request {
        method,
        target,
        keep_alive,
        content_length,
        forwarded,
    }))
}

fn respond(
    w: &mut impl Write,
    status: &str,
    body: &str,
    name: &str,
    keep_alive: bool,
    with_body: bool,
) -> io::Result<()> {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nX-Weir-Backend: {name}\r\nConnection: {connection}\r\n\r\n",
        body.len()
    );
    if with_body {
        response.push_str(body);
    }
    w.write_all(response.as_bytes())?;
    w.flush()
}

fn udp_loop(socket: UdpSocket, bound: SocketAddr, name: Arc<str>) {
    let mut buf = vec![0u8; 65536];
    let prefix = format!("{name} ");
    loop {
        let Ok((len, peer, dst)) = recv_with_dst(&socket, &mut buf) else {
            thread::sleep(Duration::from_millis(1));
            continue;
        };
        let mut reply = Vec::with_capacity(prefix.len() + len);
        reply.extend_from_slice(prefix.as_bytes());
        reply.extend_from_slice(&buf[..len]);
        reply.truncate(65507);
        // Answer from the address the datagram was sent to, unless bound to one.
        let from = if bound.ip().is_unspecified() {
            dst
        } else {
            None
        };
        let _ = send_from(&socket, &reply, peer, from);
    }
}

/// Enough room for one IPv4 or IPv6 packet-info control message.
const CMSG_ROOM: usize = 64;

#[repr(C, align(8))]
struct CmsgBuf([u8; CMSG_ROOM]);

fn recv_with_dst(
    socket: &UdpSocket,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr, Option<IpAddr>)> {
    // SAFETY: zeroed C structs are valid; every pointer stored below outlives the call.
    unsafe {
        let mut peer: libc::sockaddr_storage = mem::zeroed();
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut control = CmsgBuf([0; CMSG_ROOM]);
        let mut msg: libc::msghdr = mem::zeroed();
        msg.msg_name = (&mut peer as *mut libc::sockaddr_storage).cast();
        msg.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.0.as_mut_ptr().cast();
        msg.msg_controllen = CMSG_ROOM as _;
        let n = libc::recvmsg(socket.as_raw_fd(), &mut msg, 0);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let peer = from_sockaddr(&peer).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "unknown peer address family")
        })?;
        let mut dst = None;
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let (level, kind) = ((*cmsg).cmsg_level, (*cmsg).cmsg_type);
            if level == libc::IPPROTO_IP && kind == libc::IP_PKTINFO {
                let info = libc::CMSG_DATA(cmsg)
                    .cast::<libc::in_pktinfo>()
                    .read_unaligned();
                dst = Some(IpAddr::V4(Ipv4Addr::from(
                    info.ipi_addr.s_addr.to_ne_bytes(),
                )));
            } else if level == libc::IPPROTO_IPV6 && kind == libc::IPV6_PKTINFO {
                let info = libc::CMSG_DATA(cmsg)
                    .cast::<libc::in6_pktinfo>()
                    .read_unaligned();
                dst = Some(IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)));
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        Ok((n as usize, peer, dst))
    }
}

fn send_from(
    socket: &UdpSocket,
    data: &[u8],
    peer: SocketAddr,
    from: Option<IpAddr>,
) -> io::Result<()> {
    let Some(from) = from else {
        return socket.send_to(data, peer).map(drop);
    };
    let (mut peer_addr, peer_len) = to_sockaddr(peer);
    // SAFETY: as in recv_with_dst; the control buffer is large enough for one pktinfo.
    unsafe {
        let mut iov = libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        let mut control = CmsgBuf([0; CMSG_ROOM]);
        let mut msg: libc::msghdr = mem::zeroed();
        msg.msg_name = (&mut peer_addr as *mut libc::sockaddr_storage).cast();
        msg.msg_namelen = peer_len;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.0.as_mut_ptr().cast();
        let cmsg_space = match from {
            IpAddr::V4(_) => libc::CMSG_SPACE(mem::size_of::<libc::in_pktinfo>() as u32),
            IpAddr::V6(_) => libc::CMSG_SPACE(mem::size_of::<libc::in6_pktinfo>() as u32),
        };
        msg.msg_controllen = cmsg_space as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        match from {
            IpAddr::V4(ip) => {
                (*cmsg).cmsg_level = libc::IPPROTO_IP;
                (*cmsg).cmsg_type = libc::IP_PKTINFO;
                (*cmsg).cmsg_len = libc::CMSG_LEN(mem::size_of::<libc::in_pktinfo>() as u32) as _;
                let info = libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: libc::in_addr {
                        s_addr: u32::from_ne_bytes(ip.octets()),
                    },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                };
                libc::CMSG_DATA(cmsg)
                    .cast::<libc::in_pktinfo>()
                    .write_unaligned(info);
            }
            IpAddr::V6(ip) => {
                (*cmsg).cmsg_level = libc::IPPROTO_IPV6;
                (*cmsg).cmsg_type = libc::IPV6_PKTINFO;
                (*cmsg).cmsg_len = libc::CMSG_LEN(mem::size_of::<libc::in6_pktinfo>() as u32) as _;
                let info = libc::in6_pktinfo {
                    ipi6_addr: libc::in6_addr {
                        s6_addr: ip.octets(),
                    },
                    ipi6_ifindex: 0,
                };
                libc::CMSG_DATA(cmsg)
                    .cast::<libc::in6_pktinfo>()
                    .write_unaligned(info);
            }
        }
        if libc::sendmsg(socket.as_raw_fd(), &msg, 0) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
