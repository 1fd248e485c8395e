//! What a request and a response look like on the other side of the proxy: the
//! hop-by-hop headers go, the client's address is forwarded (X-Forwarded-* or a PROXY
//! protocol v2 header), HSTS is added. Pure functions over `http` types.

use std::net::{IpAddr, SocketAddr};

use hyper::{
    HeaderMap, Uri, Version,
    header::{self, HeaderName, HeaderValue},
    http::{request, response},
};

use crate::config::Forward;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");

/// The two ends of a client's connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientConnection {
    /// The client.
    pub peer: SocketAddr,
    /// The proxy's address the client connected to.
    pub local: SocketAddr,
}

/// Turns a client's request head (HTTP/1.1 or HTTP/2) into the HTTP/1.1 request head for
/// `backend`.
pub fn rewrite_request(
    head: &mut request::Parts,
    backend: SocketAddr,
    forward: Forward,
    client: ClientConnection,
) {
    // HTTP/2 carries the host in :authority; an HTTP/1.1 backend needs it in Host.
    let host = head.headers.get(header::HOST).cloned().or_else(|| {
        head.uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    remove_hop_by_hop(&mut head.headers);
    if let Some(host) = host {
        head.headers.insert(header::HOST, host);
    }
    head.uri = backend_uri(backend, &head.uri);
    head.version = Version::HTTP_11;
    if forward == Forward::XForwardedFor {
        add_forwarded_for(&mut head.headers, client);
    }
}

/// The URI of the client's request `uri` (its path and query) at `backend`.
pub fn backend_uri(backend: SocketAddr, uri: &Uri) -> Uri {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    Uri::builder()
        .scheme("http")
        .authority(backend.to_string())
        .path_and_query(path)
        .build()
        // An address and a path that parsed once always make a URI.
        .unwrap_or_else(|_| uri.clone())
}

/// Appends the client to X-Forwarded-For (one header, as the proxies before it wrote
/// them) and states the scheme and port it used.
fn add_forwarded_for(headers: &mut HeaderMap, client: ClientConnection) {
    let address = client.peer.ip().to_canonical().to_string();
    let mut chain: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    chain.push(&address);
    let value = HeaderValue::from_str(&chain.join(", "))
        .unwrap_or_else(|_| HeaderValue::from_str(&address).expect("an address is a header value"));
    headers.insert(X_FORWARDED_FOR, value);
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
    headers.insert(X_FORWARDED_PORT, HeaderValue::from(client.local.port()));
}

/// Makes a backend's response head fit for the client: no hop-by-hop headers (HTTP/2
/// forbids them), HSTS when the frontend sets it.
pub fn rewrite_response(head: &mut response::Parts, hsts: Option<&HeaderValue>) {
    remove_hop_by_hop(&mut head.headers);
    if let Some(hsts) = hsts {
        head.headers
            .insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
    }
}

/// Removes the headers that describe one connection (RFC 9110 7.6.1), and those its
/// Connection header names.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

/// The PROXY protocol version 2 header for a TCP connection from `client.peer` to
/// `client.local` (both sent as IPv6 when the families differ).
pub fn proxy_v2_header(client: ClientConnection) -> Vec<u8> {
    const SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
    const PROXY_COMMAND: u8 = 0x21; // version 2, PROXY
    let (source, destination) = (
        client.peer.ip().to_canonical(),
        client.local.ip().to_canonical(),
    );
    let mut header = SIGNATURE.to_vec();
    header.push(PROXY_COMMAND);
    match (source, destination) {
        (IpAddr::V4(source), IpAddr::V4(destination)) => {
            header.push(0x11); // TCP over IPv4
            header.extend_from_slice(&12u16.to_be_bytes());
            header.extend_from_slice(&source.octets());
            header.extend_from_slice(&destination.octets());
        }
        _ => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            header.push(0x21); // TCP over IPv6
            header.extend_from_slice(&36u16.to_be_bytes());
            header.extend_from_slice(&v6(source).octets());
            header.extend_from_slice(&v6(destination).octets());
        }
    }
    header.extend_from_slice(&client.peer.port().to_be_bytes());
    header.extend_from_slice(&client.local.port().to_be_bytes());
    header
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::{Request, Response};

    fn client() -> ClientConnection {
        ClientConnection {
            peer: "198.18.0.100:40000".parse().unwrap(),
            local: "198.18.0.2:8443".parse().unwrap(),
        }
    }

    fn backend() -> SocketAddr {
        "198.18.0.11:80".parse().unwrap()
    }

    #[test]
    fn http1_request_gets_forwarding_headers_and_loses_hop_by_hop_ones() {
        let (mut head, ()) = Request::get("/path?q=1")
            .header("host", "www.example.com")
            .header("connection", "keep-alive, x-secret")
            .header("x-secret", "dropped")
            .header("keep-alive", "timeout=5")
            .header("te", "trailers")
            .header("x-forwarded-for", "203.0.113.7")
            .header("x-forwarded-proto", "http")
            .header("accept", "*/*")
            .body(())
            .unwrap()
            .into_parts();
        rewrite_request(&mut head, backend(), Forward::XForwardedFor, client());
        assert_eq!(head.uri, "http://198.18.0.11:80/path?q=1");
        assert_eq!(head.version, Version::HTTP_11);
        let header = |name: &str| head.headers.get(name).map(|v| v.to_str().unwrap());
        assert_eq!(header("host"), Some("www.example.com"));
        assert_eq!(header("x-forwarded-for"), Some("203.0.113.7, 198.18.0.100"));
        assert_eq!(header("x-forwarded-proto"), Some("https"));
        assert_eq!(header("x-forwarded-port"), Some("8443"));
        assert_eq!(header("accept"), Some("*/*"));
        for gone in ["connection", "x-secret", "keep-alive", "te"] {
            assert_eq!(header(gone), None, "{gone}");
        }
    }

    #[test]
    fn http2_authority_becomes_the_host_header() {
        let (mut head, ()) = Request::get("https://www.example.com:8443/")
            .version(Version::HTTP_2)
            .body(())
            .unwrap()
            .into_parts();
        let v6_client = ClientConnection {
            peer: "[2001:db8:0:1::100]:5000".parse().unwrap(),
            local: "[2001:db8:0:1::2]:443".parse().unwrap(),
        };
        rewrite_request(
            &mut head,
            "[2001:db8:0:1::11]:80".parse().unwrap(),
            Forward::None,
            v6_client,
        );
        assert_eq!(head.uri, "http://[2001:db8:0:1::11]:80/");
        assert_eq!(head.headers["host"], "www.example.com:8443");
        assert!(head.headers.get("x-forwarded-for").is_none());
    }

    #[test]
    fn response_loses_hop_by_hop_headers_and_gets_hsts() {
        let (mut head, ()) = Response::builder()
            .header("connection", "close")
            .header("transfer-encoding", "chunked")
            .header("content-type", "text/plain")
            .body(())
            .unwrap()
            .into_parts();
        let hsts = HeaderValue::from_static("max-age=31536000");
        rewrite_response(&mut head, Some(&hsts));
        assert_eq!(head.headers.len(), 2, "{:?}", head.headers);
        assert_eq!(
            head.headers["strict-transport-security"],
            "max-age=31536000"
        );
    }

    #[test]
    fn proxy_v2_headers() {
        let v4 = proxy_v2_header(client());
        let mut expected = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
        expected.extend_from_slice(&[198, 18, 0, 100, 198, 18, 0, 2]);
        expected.extend_from_slice(&40000u16.to_be_bytes());
        expected.extend_from_slice(&8443u16.to_be_bytes());
        assert_eq!(v4, expected);

        let v6 = proxy_v2_header(ClientConnection {
            peer: "[2001:db8::1]:1".parse().unwrap(),
            local: "[2001:db8::2]:443".parse().unwrap(),
        });
        assert_eq!(v6.len(), 16 + 36);
        assert_eq!(&v6[12..16], b"\x21\x21\x00\x24");
        assert_eq!(
            v6[16..32],
            "2001:db8::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        );
        assert_eq!(&v6[48..], &[0, 1, 1, 187]);
    }
}
