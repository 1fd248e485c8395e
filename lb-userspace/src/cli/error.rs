//! Why an admin command failed, and the exit code that says so.

use std::{
    io,
    path::{Path, PathBuf},
};

/// The exit codes, for `--help`.
pub const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  the agent refused or failed the request (its message is printed as `weir: <message>`)
  2  usage error
  3  timed out (`backend drain --wait --timeout`)
  4  cannot reach the agent (no socket, nobody listening, no answer)";

/// Why an admin command failed; [`CliError::exit_code`] is what the process exits with.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// No connection, or no answer.
    #[error("cannot reach the weir agent at {}: {cause} ({hint})", .socket.display())]
    Unreachable {
        socket: PathBuf,
        cause: String,
        hint: &'static str,
    },
    /// The agent answered with an error status.
    #[error("{message}")]
    Agent { status: u16, message: String },
    /// The answer is not HTTP, or not the JSON expected.
    #[error("unexpected answer from the weir agent at {}: {detail}", .socket.display())]
    BadAnswer { socket: PathBuf, detail: String },
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Timeout(String),
    #[error("cannot write the output: {0}")]
    Output(#[from] io::Error),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Agent { .. } | CliError::BadAnswer { .. } | CliError::Output(_) => 1,
            CliError::Usage(_) => 2,
            CliError::Timeout(_) => 3,
            CliError::Unreachable { .. } => 4,
        }
    }

    pub(super) fn unreachable(socket: &Path, error: &io::Error) -> Self {
        let hint = if error.kind() == io::ErrorKind::PermissionDenied {
            "the socket is for its owner only: run as the agent's user or root"
        } else {
            "is `weir agent` running?"
        };
        let cause = if matches!(
            error.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            "no answer in time".to_owned()
        } else {
            io_cause(error)
        };
        CliError::Unreachable {
            socket: socket.to_owned(),
            cause,
            hint,
        }
    }
}

/// An I/O error's message without the "(os error N)" suffix, lower case first.
fn io_cause(error: &io::Error) -> String {
    let text = error.to_string();
    let text = match text.rfind(" (os error ") {
        Some(at) if text.ends_with(')') => &text[..at],
        _ => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}
