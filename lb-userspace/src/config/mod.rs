//! The agent's TOML configuration, validated as a whole: a file is either entirely valid
//! or rejected with one error naming the file, line, column and key, so that a typo is
//! never half-applied to the data plane.
//!
//! Parsing has two steps. serde turns the document into raw structs that keep every
//! value's span (syntax, type and unknown-key errors come from here); validation then
//! turns them into the public types, checking ranges and cross-references.

mod duration;
mod model;
mod raw;
mod source;
#[cfg(test)]
mod tests;
mod validate;

use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;
use toml_edit::ImDocument;

pub use duration::{format_duration, parse_duration};
pub use model::*;

use raw::RawConfig;
use source::{Source, line_col, one_line, path_at};

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The document is not TOML.
    #[error("{origin}:{line}:{column}: syntax error: {message}")]
    Syntax {
        origin: String,
        line: usize,
        column: usize,
        message: String,
    },
    /// A key is missing, unknown, of the wrong type or has a value that is not allowed.
    /// `key` is a path such as `vip[1].backend[0].weight`; line and column are 1-based
    /// and point at the offending value (or the table a missing key belongs in).
    #[error("{origin}:{line}:{column}: {key}: {message}")]
    Invalid {
        origin: String,
        line: usize,
        column: usize,
        key: String,
        message: String,
    },
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and validates `text`; `origin` names it in errors (usually the file name).
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let doc = ImDocument::parse(text).map_err(|e| {
            let (line, column) = line_col(text, e.span().map_or(0, |s| s.start));
            ConfigError::Syntax {
                origin: origin.to_owned(),
                line,
                column,
                message: one_line(e.message()),
            }
        })?;
        let src = Source { text, origin, doc };
        let raw = RawConfig::deserialize(toml_edit::de::Deserializer::from(src.doc.clone()))
            .map_err(|e| {
                // toml's errors carry a span but no key path: recover it from the document.
                let offset = e.span().map_or(0, |s| s.start);
                src.error(
                    offset,
                    &path_at(src.doc.as_table(), offset),
                    one_line(e.message()),
                )
            })?;
        raw.validate(&src)
    }
}
