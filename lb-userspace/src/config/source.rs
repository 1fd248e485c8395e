//! Positions in the file: turning a byte offset into `file:line:column: key` errors.

use std::{fmt, net::IpAddr, ops::Range, time::Duration};

use toml::Spanned;
use toml_edit::{ImDocument, Item, TableLike, Value};

use super::{raw::Integer, validate::valid_ifname, *};

/// A step of the path to a table in the document.
#[derive(Clone, Copy)]
pub(super) enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// The text being parsed, to turn positions into located errors.
pub(super) struct Source<'a> {
    pub(super) text: &'a str,
    pub(super) origin: &'a str,
    pub(super) doc: ImDocument<&'a str>,
}

impl Source<'_> {
    pub(super) fn error(
        &self,
        offset: usize,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        let (line, column) = line_col(self.text, offset);
        ConfigError::Invalid {
            origin: self.origin.to_owned(),
            line,
            column,
            key: key.to_owned(),
            message: message.into(),
        }
    }

    pub(super) fn error_at<T>(
        &self,
        value: &Spanned<T>,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        self.error(value.span().start, key, message)
    }

    /// Where the table at `path` starts (its header, or its key when it has no header),
    /// or the start of the document if it is not there.
    pub(super) fn table(&self, path: &[Step<'_>]) -> usize {
        let mut item = self.doc.as_item();
        let mut offset = 0;
        for step in path {
            let (child, key_span) = match *step {
                Step::Key(name) => match item.as_table_like().and_then(|t| t.get_key_value(name)) {
                    Some((key, child)) => (child, key.span()),
                    None => break,
                },
                Step::Index(i) => match item.get(i) {
                    Some(child) => (child, None),
                    None => break,
                },
            };
            if let Some(span) = child.span().or(key_span) {
                offset = span.start;
            }
            item = child;
        }
        offset
    }

    /// A required key, or an error pointing at the table it is missing from.
    pub(super) fn required<'v, T>(
        &self,
        value: &'v Option<T>,
        table: &[Step<'_>],
        key: &str,
    ) -> Result<&'v T, ConfigError> {
        value
            .as_ref()
            .ok_or_else(|| self.error(self.table(table), key, "required key is missing"))
    }

    pub(super) fn integer<T>(
        &self,
        value: &Spanned<Integer>,
        key: &str,
        min: T,
        max: T,
    ) -> Result<T, ConfigError>
    where
        T: TryFrom<i64> + Into<i64> + Copy + fmt::Display,
    {
        let v = value.get_ref().0;
        match T::try_from(v) {
            Ok(t) if (min.into()..=max.into()).contains(&v) => Ok(t),
            _ => Err(self.error_at(value, key, format!("must be in {min}..={max}, got {v}"))),
        }
    }

    pub(super) fn interface_name<'v>(
        &self,
        value: &'v Spanned<String>,
        key: &str,
    ) -> Result<&'v String, ConfigError> {
        let name = value.get_ref();
        if !valid_ifname(name) {
            let message = format!(
                "{name:?} is not a valid interface name (1 to 15 bytes, no '/', ':' or whitespace)"
            );
            return Err(self.error_at(value, key, message));
        }
        Ok(name)
    }

    pub(super) fn duration(
        &self,
        value: &Spanned<String>,
        key: &str,
    ) -> Result<Duration, ConfigError> {
        parse_duration(value.get_ref()).ok_or_else(|| {
            let message = format!(
                "{:?} is not a duration (a number and ms, s, m or h: \"500ms\", \"1.5s\", \"1m\")",
                value.get_ref()
            );
            self.error_at(value, key, message)
        })
    }

    pub(super) fn address(
        &self,
        value: &Spanned<String>,
        key: &str,
    ) -> Result<IpAddr, ConfigError> {
        value.get_ref().parse().map_err(|_| {
            let message = format!("{:?} is not an IPv4 or IPv6 address", value.get_ref());
            self.error_at(value, key, message)
        })
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut line = 1;
    let mut column = 1;
    for (i, c) in text.char_indices() {
        if i >= offset {
            break;
        }
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    (line, column)
}

/// toml's messages span several lines; errors here are one line each.
pub(super) fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(": ")
}

/// Readable path (`vip[1].backend[0].weight`) of the innermost key or value of the
/// document whose span contains `offset`.
pub(super) fn path_at(root: &toml_edit::Table, offset: usize) -> String {
    let mut path = String::new();
    if find_in_table(root, offset, &mut path) {
        path
    } else {
        "(document)".to_owned()
    }
}

pub(super) fn find_in_table(table: &dyn TableLike, offset: usize, path: &mut String) -> bool {
    for (name, item) in table.iter() {
        let len = path.len();
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(name);
        let key_span = table.get_key_value(name).and_then(|(k, _)| k.span());
        if contains(key_span, offset) || find_in_item(item, offset, path) {
            return true;
        }
        path.truncate(len);
    }
    false
}

pub(super) fn find_in_item(item: &Item, offset: usize, path: &mut String) -> bool {
    match item {
        Item::None => false,
        Item::Value(value) => find_in_value(value, offset, path),
        Item::Table(table) => find_in_table(table, offset, path) || contains(table.span(), offset),
        Item::ArrayOfTables(array) => array.iter().enumerate().any(|(i, table)| {
            with_index(path, i, |path| {
                find_in_table(table, offset, path) || contains(table.span(), offset)
            })
        }),
    }
}

pub(super) fn find_in_value(value: &Value, offset: usize, path: &mut String) -> bool {
    let inside = match value {
        Value::Array(array) => array
            .iter()
            .enumerate()
            .any(|(i, v)| with_index(path, i, |path| find_in_value(v, offset, path))),
        Value::InlineTable(table) => find_in_table(table, offset, path),
        _ => false,
    };
    inside || contains(value.span(), offset)
}

/// Runs `find` with `[i]` appended to `path`, keeping it only if `find` succeeds.
pub(super) fn with_index(
    path: &mut String,
    i: usize,
    find: impl FnOnce(&mut String) -> bool,
) -> bool {
    let len = path.len();
    path.push_str(&format!("[{i}]"));
    let found = find(path);
    if !found {
        path.truncate(len);
    }
    found
}

pub(super) fn contains(span: Option<Range<usize>>, offset: usize) -> bool {
    span.is_some_and(|s| s.contains(&offset))
}
