//! The one way xtask runs external commands: echoed before running, with errors that
//! name the command.

use std::{
    ffi::OsStr,
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, ExitStatus, Output, Stdio},
};

use anyhow::{Context, Result, bail};

/// A command to run; see [`Cmd::run`], [`Cmd::run_lines`] and [`Cmd::probe`].
pub struct Cmd {
    command: Command,
    envs: Vec<String>,
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Cmd {
        Cmd {
            command: Command::new(program),
            envs: Vec::new(),
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Cmd {
        self.command.arg(arg);
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command.args(args);
        self
    }

    pub fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Cmd {
        self.envs
            .push(format!("{key}={}", value.as_ref().to_string_lossy()));
        self.command.env(key, value);
        self
    }

    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Cmd {
        self.command.current_dir(dir);
        self
    }

    /// The command line as a shell would show it, with the environment it adds.
    pub fn line(&self) -> String {
        let mut parts = self.envs.clone();
        parts.push(weir_testbed::cmd::describe(&self.command));
        parts.join(" ")
    }

    fn echo(&self) {
        eprintln!("{}", crate::style::bold(&format!("$ {}", self.line())));
    }

    fn check(&self, status: ExitStatus) -> Result<()> {
        if !status.success() {
            bail!("`{}` failed ({status})", self.line());
        }
        Ok(())
    }

    /// Echoes the command, runs it with inherited stdio and fails unless it succeeds.
    pub fn run(mut self) -> Result<()> {
        self.echo();
        let status = self
            .command
            .stdin(Stdio::null())
            .status()
            .with_context(|| format!("cannot run `{}`", self.line()))?;
        self.check(status)
    }

    /// Like [`Cmd::run`], but hands each line of stdout to `on_line` (which should print
    /// it) as it comes; stderr is inherited.
    pub fn run_lines(mut self, mut on_line: impl FnMut(&str)) -> Result<()> {
        self.echo();
        let mut child = self
            .command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run `{}`", self.line()))?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        for line in BufReader::new(stdout).split(b'\n') {
            let line = line.with_context(|| format!("reading the output of `{}`", self.line()))?;
            on_line(&String::from_utf8_lossy(&line));
        }
        let status = child.wait()?;
        self.check(status)
    }

    /// Runs the command quietly (no echo: a check, not an action) and returns its output
    /// whatever its status; fails only when it cannot be started (e.g. not installed).
    pub fn probe(mut self) -> Result<Output> {
        self.command
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run `{}`", self.line()))
    }

    /// [`Cmd::probe`] that also requires success; returns stdout.
    pub fn read(self) -> Result<String> {
        let line = self.line();
        let out = self.probe()?;
        if !out.status.success() {
            bail!(
                "`{line}` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}
