//! The control API's client: one blocking HTTP/1.1 request per connection on the agent's
//! Unix socket (the codec is the project's `http1` crate), and the API's paths.

use std::{
    env,
    fmt::Write as _,
    io::{self, BufReader, Write},
    net::IpAddr,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Serialize, de::DeserializeOwned};

use crate::api::model::ErrorBody;

use http1::{Limits, ReadError, Response};

use super::error::CliError;

/// How long one request may take before the agent counts as unreachable.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A blocking HTTP/1.1 client of the control socket: one connection per request.
#[derive(Clone, Debug)]
pub struct Client {
    socket: PathBuf,
    timeout: Duration,
}

/// A decoded answer, and its body as the agent sent it (for `--json`).
pub(super) struct Answer<T> {
    pub(super) value: T,
    pub(super) raw: Vec<u8>,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Client {
            socket: socket.into(),
            timeout: REQUEST_TIMEOUT,
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends one request (`body` as JSON) and returns the response, whatever its status.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Response, CliError> {
        let unreachable = |e: io::Error| CliError::unreachable(&self.socket, &e);
        let mut stream = UnixStream::connect(&self.socket).map_err(unreachable)?;
        stream
            .set_read_timeout(Some(self.timeout))
            .map_err(unreachable)?;
        stream
            .set_write_timeout(Some(self.timeout))
            .map_err(unreachable)?;
        stream
            .write_all(&http1::encode_request(
                method,
                path,
                "weir",
                &[
                    ("User-Agent", concat!("weir/", env!("CARGO_PKG_VERSION"))),
                    ("Accept", "application/json"),
                    ("Connection", "close"),
                    ("Content-Type", "application/json"),
                ],
                body,
            ))
            .map_err(unreachable)?;
        http1::read_response(&mut BufReader::new(stream), Limits::default()).map_err(|e| match e {
            ReadError::Io(e) => unreachable(e),
            ReadError::Malformed(detail) => CliError::BadAnswer {
                socket: self.socket.clone(),
                detail,
            },
        })
    }

    /// A request whose success is `expect`ed and carries a `T`; an error status becomes
    /// [`CliError::Agent`] with the error body's message.
    pub(super) fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
        expect: u16,
    ) -> Result<Answer<T>, CliError> {
        let raw = self.send(method, path, body, expect)?;
        let value = serde_json::from_slice(&raw).map_err(|e| CliError::BadAnswer {
            socket: self.socket.clone(),
            detail: format!("{method} {path}: {e}"),
        })?;
        Ok(Answer { value, raw })
    }

    /// As [`Client::call`], for an answer without a body (204).
    pub(super) fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
        expect: u16,
    ) -> Result<Vec<u8>, CliError> {
        let body = body.map(|b| serde_json::to_vec(b).expect("request shapes serialize"));
        let response = self.request(method, path, body.as_deref())?;
        if response.status == expect {
            return Ok(response.body);
        }
        Err(agent_error(&response))
    }
}

/// The error an unexpected response stands for: the message of its `{"error": …}` body,
/// else its text, else its status.
pub(super) fn agent_error(response: &Response) -> CliError {
    let message = match serde_json::from_slice::<ErrorBody>(&response.body) {
        Ok(body) => body.error,
        Err(_) => {
            let text = String::from_utf8_lossy(&response.body);
            let text = text.trim();
            if text.is_empty() {
                format!("the agent answered HTTP {}", response.status)
            } else {
                format!("the agent answered HTTP {}: {text}", response.status)
            }
        }
    };
    CliError::Agent {
        status: response.status,
        message,
    }
}

/// Percent-encodes a path segment or query value: everything but the unreserved
/// characters and `:` (so that IPv6 addresses stay readable).
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~:".contains(&byte) {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

pub(super) fn vip_path(vip: &str) -> String {
    format!("/v1/vips/{}", escape(vip))
}

pub(super) fn backends_path(vip: &str) -> String {
    format!("/v1/vips/{}/backends", escape(vip))
}

pub(super) fn backend_path(vip: &str, address: IpAddr) -> String {
    format!(
        "/v1/vips/{}/backends/{}",
        escape(vip),
        escape(&address.to_string())
    )
}

pub(super) fn flows_path(vip: Option<&str>, backend: Option<IpAddr>) -> String {
    let mut query = Vec::new();
    if let Some(vip) = vip {
        query.push(format!("vip={}", escape(vip)));
    }
    if let Some(backend) = backend {
        query.push(format!("backend={}", escape(&backend.to_string())));
    }
    if query.is_empty() {
        "/v1/flows".to_owned()
    } else {
        format!("/v1/flows?{}", query.join("&"))
    }
}
