//! The documentation against the real thing: the README's command synopsis lists every
//! command and every flag the binary has (and no flag it lacks), and every relative link
//! in the repository's guides names a file that exists.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn help(path: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_setpoint"))
        .args(path)
        .arg("--help")
        .output()
        .expect("the binary runs");
    assert!(
        out.status.success(),
        "setpoint {} --help failed",
        path.join(" ")
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The subcommands a help text lists (`help` itself left out).
fn subcommands(text: &str) -> Vec<String> {
    let Some((_, rest)) = text.split_once("Commands:\n") else {
        return Vec::new();
    };
    rest.lines()
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

/// The long flags a help text lists, each with its short form if it has one.
fn long_flags(text: &str) -> BTreeMap<String, Option<String>> {
    text.lines()
        .filter_map(|l| {
            let t = l.trim_start();
            // `-o, --output <OUTPUT>` or `--output <OUTPUT>`.
            let (short, t) = match t.strip_prefix('-') {
                Some(r) if !r.starts_with('-') => (
                    r.get(..1).map(|c| format!("-{c}")),
                    r.get(3..).unwrap_or(""),
                ),
                _ => (None, t),
            };
            let name = t.strip_prefix("--")?;
            let end = name
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .unwrap_or(name.len());
            Some((format!("--{}", &name[..end]), short))
        })
        .collect()
}

/// Every command path (`["rollout", "status"]`) and its long flags.
fn commands() -> BTreeMap<Vec<String>, BTreeMap<String, Option<String>>> {
    let mut out = BTreeMap::new();
    let mut todo: Vec<Vec<String>> = subcommands(&help(&[]))
        .into_iter()
        .map(|c| vec![c])
        .collect();
    while let Some(path) = todo.pop() {
        let args: Vec<&str> = path.iter().map(String::as_str).collect();
        let text = help(&args);
        let nested = subcommands(&text);
        if nested.is_empty() {
            out.insert(path, long_flags(&text));
        } else {
            for sub in nested {
                let mut deeper = path.clone();
                deeper.push(sub);
                todo.push(deeper);
            }
        }
    }
    out
}

/// The flags a text names, long (`--output`) and short (`-o`).
fn named_flags(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let starts = bytes[i] == '-' && (i == 0 || !bytes[i - 1].is_ascii_alphanumeric());
        if !starts {
            i += 1;
            continue;
        }
        let long = bytes.get(i + 1) == Some(&'-');
        let from = if long { i + 2 } else { i + 1 };
        let mut end = from;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == '-') {
            end += 1;
        }
        let name: String = bytes[from..end].iter().collect();
        if long && !name.is_empty() {
            out.insert(format!("--{name}"));
        } else if !long && name.len() == 1 {
            out.insert(format!("-{name}"));
        }
        i = end.max(i + 1);
    }
    out
}

#[test]
fn the_readme_synopsis_lists_every_command_and_flag() {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README");
    let (_, after) = readme
        .split_once("## Command line\n\n```\n")
        .expect("a command line section");
    let (block, _) = after.split_once("```").expect("its code block");
    // Each command's lines: its `setpoint ...` line and the indented ones after it;
    // the flags named in the shared lines (ENGINE FLAGS, ...) count for every command.
    let mut own: BTreeMap<Vec<String>, String> = BTreeMap::new();
    let mut shared = String::new();
    let mut current: Option<Vec<String>> = None;
    for line in block.lines() {
        if let Some(rest) = line.strip_prefix("setpoint ") {
            let words: Vec<String> = rest
                .split_whitespace()
                .take_while(|w| w.chars().all(|c| c.is_ascii_lowercase()))
                .map(str::to_string)
                .collect();
            current = Some(words.clone());
            own.entry(words).or_default().push_str(line);
        } else if line.starts_with(char::is_uppercase) {
            current = None;
            shared.push_str(line);
        } else if line.starts_with(' ') {
            match &current {
                Some(c) => own.entry(c.clone()).or_default().push_str(line),
                None => shared.push_str(line),
            }
        }
    }
    let shared = named_flags(&shared);
    let mut problems = Vec::new();
    for (path, flags) in commands() {
        // The synopsis line names the command by its leading words.
        let Some((_, text)) = own.iter().find(|(words, _)| words.starts_with(&path)) else {
            problems.push(format!(
                "`setpoint {}` is not in the synopsis",
                path.join(" ")
            ));
            continue;
        };
        let named = named_flags(text);
        let given = |f: &String| named.contains(f) || shared.contains(f);
        for (flag, short) in &flags {
            if !given(flag) && !short.as_ref().is_some_and(given) {
                problems.push(format!("`setpoint {}` lacks {flag}", path.join(" ")));
            }
        }
        let all: BTreeSet<&String> = flags
            .iter()
            .flat_map(|(long, short)| std::iter::once(long).chain(short.as_ref()))
            .collect();
        for flag in named.iter().filter(|f| !all.contains(f)) {
            problems.push(format!(
                "`setpoint {}` has no {flag}, which the synopsis gives it",
                path.join(" ")
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "README synopsis:\n{}",
        problems.join("\n")
    );
}

#[test]
fn every_relative_link_in_the_guides_resolves() {
    let mut broken = Vec::new();
    for guide in ["README.md", "ARCHITECTURE.md", "wit/README.md"] {
        let path = root().join(guide);
        let text = std::fs::read_to_string(&path).expect("guide");
        let dir = path.parent().expect("a directory");
        let mut rest = text.as_str();
        while let Some(at) = rest.find("](") {
            let tail = &rest[at + 2..];
            let end = tail.find(')').unwrap_or(tail.len());
            let target = tail[..end].split('#').next().unwrap_or("");
            if !target.is_empty() && !target.contains("://") && !dir.join(target).exists() {
                broken.push(format!("{guide}: {target}"));
            }
            rest = &tail[end..];
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}
