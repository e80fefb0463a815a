//! Every `cidboot …` command line in docs/ and README.md parses with the current command line
//! (clap's own parser, the one `cidboot` runs, so `--help` of each subcommand is the reference):
//! the lines of shell and unit-file blocks, and inline code spans in the prose. Nothing is run.
//! Placeholders (`ipfs://bafy…`, `<PCR0>`, `sha256:…`) are values like any other to the parser.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use std::path::Path;

use clap::Parser;

/// One command line found in a page, with where it is.
#[derive(Debug)]
struct Found {
    place: String,
    words: Vec<String>,
    /// An inline mention in the prose (`cidboot host --check`), which may leave out required
    /// arguments and the value of its last flag; a code block's line must be whole.
    mention: bool,
}

/// Words that end a command in a shell line.
fn ends_command(w: &str) -> bool {
    matches!(w, "|" | "||" | "&&" | ";" | "&" | ")" | "<" | "<<<")
        || w.starts_with('>')
        || w.starts_with("2>")
        || w.starts_with("<(")
        || w.starts_with('<') && w.len() > 1 && !w.ends_with('>')
}

/// The `cidboot` commands in one shell line (continuations already joined).
fn commands_in(line: &str) -> Vec<Vec<String>> {
    // `$(cidboot …)` and `… | cidboot …` start commands inside the line: make them words.
    let spaced = line
        .replace("$(", " $( ")
        .replace('`', " ")
        .replace(';', " ; ");
    let Some(words) = shlex::split(&spaced) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let w = &words[i];
        let is_cidboot = w == "cidboot" || w.ends_with("/cidboot") || w == "\"$bin\"";
        // A command position: the line's start, after an operator, `$(`, `sudo`, `env X=Y`.
        let at_start = i == 0
            || matches!(
                words[i - 1].as_str(),
                "|" | "||" | "&&" | ";" | "$(" | "sudo" | "exec" | "then" | "do" | "time"
            )
            || words[i - 1].contains('=') && !words[i - 1].starts_with('-')
            || words[i - 1].starts_with("ExecStart");
        if is_cidboot && at_start {
            let mut cmd = vec!["cidboot".to_string()];
            let mut j = i + 1;
            while j < words.len() && !ends_command(&words[j]) {
                cmd.push(words[j].trim_end_matches(')').to_string());
                j += 1;
            }
            out.push(cmd);
            i = j;
        } else {
            i += 1;
        }
    }
    out
}

/// Every `cidboot` command of a page: shell-like code blocks line by line, `ExecStart…=`
/// lines of unit files, and inline code spans of the prose.
fn commands(page: &str, text: &str) -> Vec<Found> {
    let mut out = Vec::new();
    let mut fence: Option<String> = None;
    let mut pending = String::new();
    let mut start = 0;
    for (n, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix("```") {
            fence = match fence {
                Some(_) => None,
                None => Some(rest.trim().to_string()),
            };
            continue;
        }
        match &fence {
            Some(lang)
                if matches!(
                    lang.as_str(),
                    "sh" | "bash" | "shell" | "console" | "" | "ini"
                ) =>
            {
                let l = t.strip_prefix("$ ").unwrap_or(t);
                if l.starts_with('#') && lang != "ini" {
                    continue;
                }
                let l = if lang == "ini" {
                    match l.split_once('=') {
                        Some((k, v)) if k.starts_with("Exec") => v,
                        _ => continue,
                    }
                } else {
                    l
                };
                if pending.is_empty() {
                    start = n + 1;
                }
                if let Some(cont) = l.strip_suffix('\\') {
                    pending.push_str(cont);
                    pending.push(' ');
                    continue;
                }
                pending.push_str(l);
                let line = std::mem::take(&mut pending);
                // A comment after the command is not part of it.
                let line = match line.find(" # ") {
                    Some(at) => &line[..at],
                    None => &line,
                };
                for words in commands_in(line) {
                    out.push(Found {
                        place: format!("{page}:{start}"),
                        words,
                        mention: false,
                    });
                }
            }
            Some(_) => {}
            None => {
                // Inline code spans: `cidboot …`.
                let mut rest = line;
                while let Some(open) = rest.find("`cidboot ") {
                    let after = &rest[open + 1..];
                    let Some(close) = after.find('`') else { break };
                    let span = &after[..close];
                    if let Some(words) = shlex::split(span) {
                        out.push(Found {
                            place: format!("{page}:{}", n + 1),
                            words,
                            mention: true,
                        });
                    }
                    rest = &after[close + 1..];
                }
            }
        }
    }
    out
}

/// Whether a line is a synopsis rather than a command: its optional parts in brackets
/// (`[--helpers DIR]`), alternatives (`a|b`), or an ellipsis standing for more words.
fn is_synopsis(words: &[String]) -> bool {
    words.iter().any(|w| {
        w.starts_with('[') && !w.starts_with("[::") || w == "…" || w == "..." || w.ends_with("…]")
    })
}

fn pages() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = vec![(
        "README.md".to_string(),
        std::fs::read_to_string(root.join("README.md")).unwrap(),
    )];
    let mut docs: Vec<_> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    for p in docs {
        out.push((
            format!("docs/{}", p.file_name().unwrap().to_string_lossy()),
            std::fs::read_to_string(&p).unwrap(),
        ));
    }
    out
}

/// Parses a command line as `cidboot` would; a mention may stop short (see [`Found`]).
fn parses(f: &Found) -> Result<(), clap::Error> {
    use clap::error::ErrorKind;
    let mut words = f.words.clone();
    loop {
        match cidboot::cli::Cli::try_parse_from(&words) {
            Ok(_) => return Ok(()),
            Err(e) if f.mention && e.kind() == ErrorKind::MissingRequiredArgument => return Ok(()),
            Err(e)
                if f.mention
                    && e.kind() == ErrorKind::InvalidValue
                    && words.last().is_some_and(|w| w.starts_with("--")) =>
            {
                words.push("VALUE".into());
            }
            Err(e) => return Err(e),
        }
    }
}

#[test]
fn every_cidboot_command_line_in_the_docs_parses() {
    let mut checked = 0;
    let mut bad = Vec::new();
    for (page, text) in pages() {
        for f in commands(&page, &text) {
            if f.words.len() < 2 || is_synopsis(&f.words) {
                continue;
            }
            checked += 1;
            if let Err(e) = parses(&f) {
                let first = e.to_string().lines().next().unwrap_or_default().to_string();
                bad.push(format!("{}: {}\n    {first}", f.place, f.words.join(" ")));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {checked} command lines do not parse:\n{}",
        bad.len(),
        bad.join("\n")
    );
    // The pages have many: a reader that found few would prove little.
    assert!(checked > 40, "only {checked} command lines found");
}

/// The reader finds commands where the pages put them, and the parser refuses what is wrong.
#[test]
fn the_reader_finds_commands_and_the_parser_refuses_wrong_ones() {
    let page = "Run `cidboot pull ipfs://bafy… --out x` then:\n\n```sh\ncidboot verify doc.cbor --pcr 0=<PCR0> \\\n  --expect-cid ipfs://bafy…   # a comment\nCID=$(cidboot pack layout --car x.car) && echo \"$CID\" | cidboot inspect -\n```\n\n```ini\nExecStartPre=/usr/local/bin/cidboot host --check --config /etc/cidboot/host.toml\n```\n";
    let found: Vec<String> = commands("p.md", page)
        .iter()
        .map(|f| format!("{} {}", f.place, f.words.join(" ")))
        .collect();
    assert_eq!(
        found,
        [
            "p.md:1 cidboot pull ipfs://bafy… --out x",
            "p.md:4 cidboot verify doc.cbor --pcr 0=<PCR0> --expect-cid ipfs://bafy…",
            "p.md:6 cidboot pack layout --car x.car",
            "p.md:6 cidboot inspect -",
            "p.md:10 cidboot host --check --config /etc/cidboot/host.toml",
        ]
    );
    let mention = |words: &[&str]| Found {
        place: String::new(),
        words: words.iter().map(ToString::to_string).collect(),
        mention: true,
    };
    assert!(parses(&mention(&["cidboot", "host", "--check"])).is_ok());
    assert!(parses(&mention(&["cidboot", "run", "--log-sink"])).is_ok());
    assert!(parses(&mention(&["cidboot", "host", "--chek"])).is_err());
    assert!(parses(&mention(&["cidboot", "pull", "--config"])).is_err());
    for wrong in [
        &["cidboot", "verify", "doc.cbor", "--no-such-flag"][..],
        &["cidboot", "host", "--check"],
        &["cidboot", "nonsense"],
        &["cidboot", "pull", "ipfs://x", "--config", "c.toml"],
    ] {
        assert!(
            cidboot::cli::Cli::try_parse_from(wrong).is_err(),
            "{wrong:?} parsed"
        );
    }
}
