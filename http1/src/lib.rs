//! One blocking HTTP/1.1 client codec for the whole project: the CLI talks to the agent's
//! control socket with it, and the test bed's clients and load generator talk to backends
//! through the load balancer with it. It encodes a request and reads one response —
//! nothing else (no connection handling, no redirects) — and never panics on what a peer
//! sends: every malformed, oversized or truncated answer is a [`ReadError`].

use std::{
    fmt::Write as _,
    io::{self, BufRead, Read},
};

/// A response: its status, its header lines as sent, and its body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// Why no response could be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The connection failed (a timed-out read is `WouldBlock` or `TimedOut`).
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The peer's bytes are not an acceptable HTTP/1.1 response.
    #[error("{0}")]
    Malformed(String),
}

/// What a reader accepts.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Bytes of status line and headers together.
    pub max_head: usize,
    /// Bytes of body.
    pub max_body: u64,
    /// Whether a body without Content-Length or chunked framing runs to the end of the
    /// stream. A reader that keeps the connection for more requests must refuse it.
    pub body_to_eof: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head: 64 * 1024,
            max_body: 64 * 1024 * 1024,
            body_to_eof: true,
        }
    }
}

/// Encodes a request: `headers` after `Host`, then Content-Length (for a body, or for a
/// method that carries one) and the body.
pub fn encode_request(
    method: &str,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (name, value) in headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    match body {
        Some(body) => {
            let _ = write!(head, "Content-Length: {}\r\n", body.len());
        }
        None if !matches!(method, "GET" | "HEAD" | "DELETE") => {
            head.push_str("Content-Length: 0\r\n");
        }
        None => {}
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body.unwrap_or_default());
    bytes
}

/// Reads one response: the body by Content-Length, chunked, or (if `limits` allow) to the
/// end of the stream. Interim 1xx answers are skipped; 204 and 304 have no body.
pub fn read_response(reader: &mut impl BufRead, limits: Limits) -> Result<Response, ReadError> {
    loop {
        let (status, headers) = read_head(reader, limits.max_head)?;
        if (100..200).contains(&status) {
            continue; // 100 Continue and the like: the real answer follows.
        }
        let body = if status == 204 || status == 304 {
            Vec::new()
        } else {
            read_body(reader, &headers, limits)?
        };
        return Ok(Response {
            status,
            headers,
            body,
        });
    }
}

type Head = (u16, Vec<(String, String)>);

fn read_head(reader: &mut impl BufRead, max_head: usize) -> Result<Head, ReadError> {
    let mut head_len = 0;
    let status_line = read_line(reader, &mut head_len, max_head)?
        .ok_or_else(|| malformed("the connection closed before a response"))?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let status = parts
        .next()
        .filter(|code| code.len() == 3)
        .and_then(|code| code.parse::<u16>().ok())
        .filter(|_| version.starts_with("HTTP/1."));
    let Some(status) = status else {
        return Err(malformed(&format!(
            "not an HTTP response: {:?}",
            truncate(&status_line, 80)
        )));
    };
    let mut headers = Vec::new();
    loop {
        let line = read_line(reader, &mut head_len, max_head)?
            .ok_or_else(|| malformed("the connection closed inside the response head"))?;
        if line.is_empty() {
            return Ok((status, headers));
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(malformed(&format!(
                "a header line without a colon: {:?}",
                truncate(&line, 80)
            )));
        };
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
}

fn read_body(
    reader: &mut impl BufRead,
    headers: &[(String, String)],
    limits: Limits,
) -> Result<Vec<u8>, ReadError> {
    let mut length: Option<u64> = None;
    let mut chunked = false;
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
            if !chunked {
                return Err(malformed(&format!(
                    "unsupported transfer-encoding {value:?}"
                )));
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            let n = value
                .parse::<u64>()
                .map_err(|_| malformed(&format!("a bad Content-Length {value:?}")))?;
            if length.is_some_and(|known| known != n) {
                return Err(malformed("conflicting Content-Length headers"));
            }
            length = Some(n);
        }
    }
    if chunked {
        return read_chunked(reader, limits);
    }
    match length {
        Some(length) => {
            if length > limits.max_body {
                return Err(malformed(&format!("a body of {length} bytes is too large")));
            }
            let mut body = Vec::new();
            reader.by_ref().take(length).read_to_end(&mut body)?;
            if (body.len() as u64) < length {
                return Err(malformed(&format!(
                    "the connection closed after {} of {length} body bytes",
                    body.len()
                )));
            }
            Ok(body)
        }
        None if limits.body_to_eof => {
            let mut body = Vec::new();
            reader
                .by_ref()
                .take(limits.max_body + 1)
                .read_to_end(&mut body)?;
            if body.len() as u64 > limits.max_body {
                return Err(malformed("the body is too large"));
            }
            Ok(body)
        }
        None => Err(malformed("a response without Content-Length")),
    }
}

fn read_chunked(reader: &mut impl BufRead, limits: Limits) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    loop {
        let mut line_len = 0;
        let line = read_line(reader, &mut line_len, limits.max_head)?
            .ok_or_else(|| malformed("the connection closed inside a chunked body"))?;
        let size = line.split(';').next().unwrap_or_default().trim();
        let size = u64::from_str_radix(size, 16)
            .map_err(|_| malformed(&format!("a bad chunk size {:?}", truncate(size, 20))))?;
        if size == 0 {
            // Trailers, up to the empty line.
            let mut trailers_len = 0;
            while let Some(line) = read_line(reader, &mut trailers_len, limits.max_head)? {
                if line.is_empty() {
                    return Ok(body);
                }
            }
            return Err(malformed("the connection closed inside the trailers"));
        }
        if body.len() as u64 + size > limits.max_body {
            return Err(malformed("the body is too large"));
        }
        let start = body.len();
        reader.by_ref().take(size).read_to_end(&mut body)?;
        if ((body.len() - start) as u64) < size {
            return Err(malformed("the connection closed inside a chunk"));
        }
        let mut crlf_len = 0;
        read_line(reader, &mut crlf_len, limits.max_head)?; // the chunk's CRLF
    }
}

/// One line without its CRLF, counted against `max` bytes; `None` at the end of the
/// stream, an error when the stream ends inside the line.
fn read_line(
    reader: &mut impl BufRead,
    used: &mut usize,
    max: usize,
) -> Result<Option<String>, ReadError> {
    let mut line = Vec::new();
    let allowance = (max.saturating_sub(*used) + 1) as u64;
    let n = reader.take(allowance).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    *used += n;
    if *used > max {
        return Err(malformed(&format!("the response head is over {max} bytes")));
    }
    if !line.ends_with(b"\n") {
        return Err(malformed("the connection closed inside the response head"));
    }
    while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        line.pop();
    }
    String::from_utf8(line)
        .map(Some)
        .map_err(|_| malformed("a header line is not UTF-8"))
}

fn malformed(what: &str) -> ReadError {
    ReadError::Malformed(what.to_owned())
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> Result<Response, ReadError> {
        read_response(&mut &bytes[..], Limits::default())
    }

    fn parse_keep_alive(bytes: &[u8]) -> Result<Response, ReadError> {
        let limits = Limits {
            body_to_eof: false,
            ..Limits::default()
        };
        read_response(&mut &bytes[..], limits)
    }

    #[test]
    fn reads_back_to_back_responses_framed_by_length() {
        let mut stream: &[u8] =
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: keep-alive\r\n\r\nbackend1\n\
              HTTP/1.1 200 OK\r\ncontent-length:9\r\n\r\nbackend2\n";
        let limits = Limits::default();
        let first = read_response(&mut stream, limits).unwrap();
        assert_eq!((first.status, &first.body[..]), (200, &b"backend1\n"[..]));
        assert_eq!(first.header("connection"), Some("keep-alive"));
        let second = read_response(&mut stream, limits).unwrap();
        assert_eq!(second.body, b"backend2\n");
    }

    #[test]
    fn reads_chunked_bodies_interim_answers_and_bodies_to_the_end() {
        let chunked = parse(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
              4;ext=1\r\nweir\r\n2\r\n!\n\r\n0\r\nX-Trailer: 1\r\n\r\n",
        )
        .unwrap();
        assert_eq!((chunked.status, &chunked.body[..]), (200, &b"weir!\n"[..]));
        let to_eof = parse(b"HTTP/1.0 503 Busy\r\n\r\nbusy\n").unwrap();
        assert_eq!((to_eof.status, &to_eof.body[..]), (503, &b"busy\n"[..]));
        let no_content = parse(b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n").unwrap();
        assert!(no_content.body.is_empty());
    }

    #[test]
    fn refuses_malformed_truncated_and_oversized_answers() {
        let huge = format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "a".repeat(64 * 1024));
        let cases: &[&[u8]] = &[
            b"",
            b"HTTP/1.1",
            b"HTTP/1.1 200 OK",
            b"HTTP/1.1 200 OK\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nback",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 abc OK\r\nContent-Length: 0\r\n\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"\xff\xfe\xfd\r\n\r\n",
            huge.as_bytes(),
        ];
        for case in cases {
            assert!(
                parse(case).is_err(),
                "{:?} parsed",
                String::from_utf8_lossy(case)
            );
        }
        assert!(parse_keep_alive(b"HTTP/1.1 200 OK\r\n\r\nbackend1\n").is_err());
    }

    #[test]
    fn no_prefix_or_mutation_of_a_response_panics() {
        let good = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nbackend1\n";
        for end in 0..good.len() {
            assert!(
                parse_keep_alive(&good[..end]).is_err(),
                "prefix of {end} bytes parsed"
            );
        }
        for at in 0..good.len() {
            for byte in [0, b'\r', b'\n', b':', b' ', b'9', 0xff] {
                let mut bad = good.to_vec();
                bad[at] = byte;
                let _ = parse(&bad);
            }
        }
    }

    #[test]
    fn encodes_requests_with_and_without_bodies() {
        let get = encode_request("GET", "/v1/status", "weir", &[("Accept", "*/*")], None);
        assert_eq!(
            get,
            b"GET /v1/status HTTP/1.1\r\nHost: weir\r\nAccept: */*\r\n\r\n"
        );
        let post = encode_request("POST", "/v1/reload", "weir", &[], None);
        assert!(post.ends_with(b"Content-Length: 0\r\n\r\n"));
        let put = encode_request("PUT", "/x", "weir", &[], Some(b"{}"));
        assert!(put.ends_with(b"Content-Length: 2\r\n\r\n{}"));
    }
}
