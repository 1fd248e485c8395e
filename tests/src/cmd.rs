//! Running external commands (`ip`, `ethtool`, …) with errors that name the command and
//! carry its stderr.

use std::{
    ffi::OsStr,
    process::{Command, Output, Stdio},
};

use anyhow::{Context, Result, bail};

/// The command line of `cmd`, shell-like, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&quote(arg));
    }
    line
}

fn quote(arg: &OsStr) -> String {
    let s = arg.to_string_lossy();
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,+@[]%".contains(c))
    {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Runs `cmd` to completion (stdin closed) and returns its output whatever its exit
/// status; fails only when it cannot be started.
pub fn output(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run `{}`", describe(cmd)))
}

/// Runs `cmd` and returns its stdout; fails, naming the command and quoting its stderr,
/// unless it exits with status 0.
pub fn check(cmd: &mut Command) -> Result<String> {
    let out = output(cmd)?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `argv` (program and arguments) in the current namespace; see [`check`].
pub fn run<S: AsRef<OsStr>>(argv: &[S]) -> Result<String> {
    let (program, args) = argv.split_first().context("run: empty command line")?;
    check(Command::new(program).args(args))
}
