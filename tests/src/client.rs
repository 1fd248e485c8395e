//! Clients for tests: HTTP GET and UDP request/response, made from inside a namespace by
//! this process (the calling thread enters the namespace to open the socket). No DNS:
//! hosts are IP literals.

use std::{
    io::{BufReader, Write},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

use crate::netns::Netns;

/// How long a client waits to connect, and for each read or write.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// An HTTP response, with its body as text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names as sent.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl From<http1::Response> for HttpResponse {
    fn from(response: http1::Response) -> Self {
        HttpResponse {
            status: response.status,
            headers: response.headers,
            body: String::from_utf8_lossy(&response.body).into_owned(),
        }
    }
}

/// `http://HOST[:PORT][/PATH]` with an IP literal host → (address, path).
pub fn parse_http_url(url: &str) -> Result<(SocketAddr, String)> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("not an http:// URL: {url}"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_owned()),
        None => (rest, "/".to_owned()),
    };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .with_context(|| format!("bad IPv6 host in {url}"))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .with_context(|| format!("bad port in {url}"))?,
            ),
        };
        (host, port)
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let ip: IpAddr = host
        .parse()
        .with_context(|| format!("host of {url} is not an IP address"))?;
    let port = match port {
        Some(p) => p.parse().with_context(|| format!("bad port in {url}"))?,
        None => 80,
    };
    Ok((SocketAddr::new(ip, port), path))
}

/// GETs `url` from inside `ns` (one connection, `Connection: close`).
pub fn http_get(ns: &Netns, url: &str) -> Result<HttpResponse> {
    let mut responses = http_get_keepalive(ns, url, 1)?;
    Ok(responses.remove(0))
}

/// GETs `url` `count` times over ONE keep-alive connection (one flow, so a load balancer
/// must send every request to the same backend).
pub fn http_get_keepalive(ns: &Netns, url: &str, count: usize) -> Result<Vec<HttpResponse>> {
    ensure!(count > 0, "http_get_keepalive: count must be at least 1");
    let (addr, path) = parse_http_url(url)?;
    let stream = ns
        .enter(|| TcpStream::connect_timeout(&addr, CLIENT_TIMEOUT))?
        .with_context(|| format!("cannot connect to {addr} from {}", ns.name()))?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let host = match addr {
        SocketAddr::V4(_) => addr.to_string(),
        SocketAddr::V6(_) => format!("[{}]:{}", addr.ip(), addr.port()),
    };
    let mut responses = Vec::with_capacity(count);
    for i in 0..count {
        let connection = if i + 1 == count {
            "close"
        } else {
            "keep-alive"
        };
        let request = http1::encode_request(
            "GET",
            &path,
            &host,
            &[("User-Agent", "weir-testbed"), ("Connection", connection)],
            None,
        );
        writer
            .write_all(&request)
            .with_context(|| format!("cannot send request {} to {addr}", i + 1))?;
        let response = http1::read_response(&mut reader, http1::Limits::default())
            .map(HttpResponse::from)
            .with_context(|| format!("no valid response to request {} from {url}", i + 1))?;
        responses.push(response);
    }
    Ok(responses)
}

/// GETs `url` with `curl` run inside `ns` and returns the body (for checking against a
/// real client).
pub fn curl(ns: &Netns, url: &str) -> Result<String> {
    ns.run(&[
        "curl",
        "--silent",
        "--show-error",
        "--fail",
        "--max-time",
        "5",
        url,
    ])
}

/// Sends `payload` to `addr` over UDP from inside `ns` and returns the first answer that
/// comes from `addr` itself (the socket is connected, so answers from another source
/// address, e.g. a DSR backend that did not answer from the VIP, are ignored). Resends up
/// to 5 times, one second apart.
pub fn udp_request(ns: &Netns, addr: SocketAddr, payload: &[u8]) -> Result<Vec<u8>> {
    let bind: SocketAddr = if addr.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    }
    .parse()?;
    udp_request_from(ns, bind, addr, payload)
}

/// [`udp_request`] from a chosen local address and port (e.g. to pick the flow).
pub fn udp_request_from(
    ns: &Netns,
    bind: SocketAddr,
    addr: SocketAddr,
    payload: &[u8],
) -> Result<Vec<u8>> {
    const ATTEMPTS: u32 = 5;
    const WAIT: Duration = Duration::from_secs(1);
    let socket = ns
        .enter(|| -> std::io::Result<UdpSocket> {
            let socket = UdpSocket::bind(bind)?;
            socket.connect(addr)?;
            Ok(socket)
        })?
        .with_context(|| format!("cannot open a UDP socket {bind} -> {addr} in {}", ns.name()))?;
    let mut buf = vec![0u8; 65536];
    for _ in 0..ATTEMPTS {
        socket
            .send(payload)
            .with_context(|| format!("cannot send to {addr}"))?;
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            socket.set_read_timeout(Some(left))?;
            match socket.recv(&mut buf) {
                Ok(n) => return Ok(buf[..n].to_vec()),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break;
                }
                // ICMP port unreachable surfaces as ECONNREFUSED: retry, the server may
                // be starting.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e).with_context(|| format!("cannot receive from {addr}")),
            }
        }
    }
    bail!(
        "no UDP answer from {addr} to {} after {ATTEMPTS} tries from {}",
        bind,
        ns.name()
    )
}
