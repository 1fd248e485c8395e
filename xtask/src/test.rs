//! `cargo xtask test`, the project's test command (also what CI runs): setup, then
//! formatting, clippy, the build and every test, with a summary at the end.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use weir_testbed::bins::{TEST_SERVER_BIN_ENV, WEIR_BIN_ENV};

use crate::{build, cargo, cmd::Cmd, require_root, setup, style};

/// Test threads per test binary: the network-namespace tests mostly wait on `ip` and on
/// sockets, so a few more than the 2 cores keeps them busy; they are parallel-safe.
const TEST_THREADS: &str = "4";

enum Outcome {
    Ok,
    Failed(String),
    Skipped,
}

struct Step {
    name: &'static str,
    outcome: Outcome,
    took: Duration,
}

#[derive(Default)]
struct Report {
    steps: Vec<Step>,
}

impl Report {
    /// Runs `f` as step `name` and records how it went; returns whether it succeeded.
    fn step<T>(&mut self, name: &'static str, f: impl FnOnce() -> Result<T>) -> Option<T> {
        eprintln!("\n{}", style::bold(&format!("==> {name}")));
        let start = Instant::now();
        let result = f();
        let took = start.elapsed();
        match result {
            Ok(value) => {
                self.steps.push(Step {
                    name,
                    outcome: Outcome::Ok,
                    took,
                });
                Some(value)
            }
            Err(e) => {
                eprintln!("{} {e:#}", style::error(&format!("{name} failed:")));
                self.steps.push(Step {
                    name,
                    outcome: Outcome::Failed(format!("{e:#}")),
                    took,
                });
                None
            }
        }
    }

    fn skip(&mut self, name: &'static str) {
        self.steps.push(Step {
            name,
            outcome: Outcome::Skipped,
            took: Duration::ZERO,
        });
    }

    fn failed(&self) -> Vec<&'static str> {
        self.steps
            .iter()
            .filter(|s| matches!(s.outcome, Outcome::Failed(_)))
            .map(|s| s.name)
            .collect()
    }

    fn print(&self, tests: &TestCounts) {
        println!("\n==== cargo xtask test: summary ====");
        for step in &self.steps {
            let (status, detail) = match &step.outcome {
                Outcome::Ok => ("ok", String::new()),
                Outcome::Failed(e) => ("FAILED", e.lines().next().unwrap_or_default().to_owned()),
                Outcome::Skipped => ("skipped", "(an earlier step failed)".to_owned()),
            };
            println!(
                "  {status:<8} {:<12} {:>7.1}s  {detail}",
                step.name,
                step.took.as_secs_f64()
            );
        }
        if tests.binaries > 0 {
            println!("  ({} test binaries)", tests.binaries);
            println!(
                "tests: {} passed, {} failed, {} skipped",
                tests.passed, tests.failed, tests.ignored
            );
        } else {
            println!("tests: not run");
        }
    }
}

/// Totals of the `test result:` lines of `cargo test`.
#[derive(Default, Debug, PartialEq, Eq)]
struct TestCounts {
    binaries: u32,
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl TestCounts {
    /// Adds `test result: ok. 15 passed; 0 failed; 2 ignored; 0 measured; …` lines.
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        let Some((_, counts)) = rest.split_once(". ") else {
            return;
        };
        self.binaries += 1;
        for part in counts.split(';') {
            let mut words = part.split_whitespace();
            let (Some(n), Some(what)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

pub fn test() -> Result<()> {
    require_root("the tests create network namespaces and attach XDP programs")?;
    let mut report = Report::default();
    let mut tests = TestCounts::default();

    if report.step("setup", setup::setup).is_none() {
        report.print(&tests);
        bail!("setup failed");
    }
    let stale = weir_testbed::cleanup_stale_namespaces()?;
    if !stale.is_empty() {
        eprintln!(
            "removed stale test namespaces of dead processes: {}",
            stale.join(" ")
        );
    }

    report.step("fmt", || {
        cargo().args(["fmt", "--all", "--", "--check"]).run()
    });
    report.step("clippy", || {
        cargo()
            .arg("clippy")
            .args(build::host_packages())
            .args(["--all-targets", "--", "-D", "warnings"])
            .run()
    });
    // The XDP program only builds for the BPF target, so it is linted there.
    report.step("clippy-ebpf", || {
        Cmd::new("cargo")
            .current_dir(crate::workspace_root())
            .args([
                "+nightly",
                "clippy",
                "-p",
                "lb-ebpf",
                "--target",
                "bpfel-unknown-none",
            ])
            .args(["-Z", "build-std=core", "--", "-D", "warnings"])
            .run()
    });
    match report.step("build", || build::build(false, true)) {
        Some(built) => {
            report.step("test", || {
                cargo()
                    .arg("test")
                    .args(build::host_packages())
                    .args(["--no-fail-fast", "--", "--test-threads", TEST_THREADS])
                    .env(WEIR_BIN_ENV, &built.weir_bin)
                    .env(TEST_SERVER_BIN_ENV, &built.test_server_bin)
                    .run_lines(|line| {
                        println!("{line}");
                        tests.add_line(line);
                    })
            });
            // Every test process has exited: a namespace of theirs that is still there
            // leaked (a guard that did not drop).
            report.step("netns-leaks", || {
                let leaked = weir_testbed::cleanup_stale_namespaces()?;
                if !leaked.is_empty() {
                    bail!(
                        "the tests left network namespaces behind (now removed): {}",
                        leaked.join(" ")
                    );
                }
                Ok(())
            });
        }
        None => {
            report.skip("test");
        }
    }

    report.print(&tests);
    let failed = report.failed();
    if !failed.is_empty() {
        bail!("failed: {}", failed.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::TestCounts;

    #[test]
    fn test_result_lines_add_up() {
        let mut counts = TestCounts::default();
        for line in [
            "running 3 tests",
            "test result: ok. 15 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 1.50s",
            "test result: FAILED. 1 passed; 3 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s",
            "test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s",
        ] {
            counts.add_line(line);
        }
        assert_eq!(
            counts,
            TestCounts {
                binaries: 3,
                passed: 16,
                failed: 3,
                ignored: 2
            }
        );
    }
}
