//! Headless Chromium (Debian's `chromium`) as a test client: it loads a page inside a
//! namespace as a person's browser would, and dumps the DOM or takes a screenshot.
//! Each run gets a fresh profile directory (removed afterwards) and none of Chromium's
//! background traffic.

use std::{
    ffi::OsString,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::netns::{Netns, next_id};

/// How long one page load may take (Chromium starts in about a second).
const TIMEOUT: Duration = Duration::from_secs(30);

/// What to do with the loaded page.
enum Capture<'a> {
    Dom,
    Screenshot(&'a Path),
}

fn chromium(ns: &Netns, url: &str, capture: Capture<'_>) -> Result<String> {
    let profile = std::env::temp_dir().join(format!(
        "weir-chromium-{}-{}",
        std::process::id(),
        next_id()
    ));
    std::fs::create_dir_all(&profile)
        .with_context(|| format!("cannot create {}", profile.display()))?;
    let mut argv: Vec<OsString> = [
        "timeout",
        "--kill-after=5",
        "30",
        "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
    ]
    .iter()
    .map(Into::into)
    .collect();
    let mut flag = OsString::from("--user-data-dir=");
    flag.push(&profile);
    argv.push(flag);
    match capture {
        Capture::Dom => argv.push("--dump-dom".into()),
        Capture::Screenshot(path) => {
            let mut flag = OsString::from("--screenshot=");
            flag.push(path);
            argv.push(flag);
        }
    }
    argv.push(url.into());
    let started = Instant::now();
    let output = ns.output(&argv);
    let _ = std::fs::remove_dir_all(&profile);
    let output = output.context("cannot run chromium (Debian package `chromium`)")?;
    if !output.status.success() {
        bail!(
            "chromium failed on {url} ({}, after {:?}): {}",
            output.status,
            started.elapsed().min(TIMEOUT),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The DOM of `url` after it loaded, as Chromium serializes it (`--dump-dom`).
pub fn dump_dom(ns: &Netns, url: &str) -> Result<String> {
    chromium(ns, url, Capture::Dom)
}

/// Loads `url` and saves a PNG screenshot of it at `path`.
pub fn screenshot(ns: &Netns, url: &str, path: &Path) -> Result<()> {
    chromium(ns, url, Capture::Screenshot(path))?;
    let png =
        std::fs::read(path).with_context(|| format!("no screenshot at {}", path.display()))?;
    if !png.starts_with(b"\x89PNG") {
        bail!("{} is not a PNG", path.display());
    }
    Ok(())
}
