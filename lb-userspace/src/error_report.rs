//! One line for an error and its causes, as the binary prints it on exit.

use std::error::Error;

/// `error: cause: cause…`, leaving out a cause whose text the line already holds: most
/// errors here print their source in their own message and return it from `source()`
/// too, and the cause must not be printed twice.
pub fn describe(error: &(dyn Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(current) = cause {
        let text = current.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = current.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use std::{io, path::PathBuf};

    use super::describe;
    use crate::dataplane::{DataplaneError, pins::PinError};

    #[test]
    fn a_cause_the_message_holds_is_printed_once() {
        let error = DataplaneError::from(PinError::Io {
            path: PathBuf::from("/sys/fs/bpf/weir/v4/maps"),
            source: io::Error::from(io::ErrorKind::NotFound),
        });
        assert_eq!(
            describe(&error),
            "/sys/fs/bpf/weir/v4/maps: entity not found"
        );
    }

    #[test]
    fn a_cause_the_message_leaves_out_is_added() {
        let error = anyhow::Error::from(io::Error::from(io::ErrorKind::NotFound))
            .context("reading the configuration");
        assert_eq!(
            describe(error.as_ref()),
            "reading the configuration: entity not found"
        );
    }
}
