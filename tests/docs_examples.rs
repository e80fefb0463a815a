//! Every TOML example in docs/ (and README.md) is a configuration the program accepts, parsed with the same
//! parser the program uses. Each ```toml block is preceded by a marker saying which file it
//! is an example of: `<!-- cidboot.toml -->` (a runtime configuration), `<!-- host.toml -->`
//! (the `cidboot host` configuration), `<!-- secrets.toml -->` (a secrets file) or
//! `<!-- publish.toml -->` (a publisher configuration). A block
//! without a marker fails the test. The shell examples run in tests/docs_sh.rs.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use std::path::{Path, PathBuf};

use cidboot::config::Loaded;
use cidboot::transport::addr::Addr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Runtime,
    Host,
    Secrets,
    Publish,
}

#[derive(Debug)]
struct Block {
    file: String,
    line: usize,
    kind: Option<Kind>,
    text: String,
}

fn marker(line: &str) -> Option<Kind> {
    match line.trim() {
        "<!-- cidboot.toml -->" => Some(Kind::Runtime),
        "<!-- host.toml -->" => Some(Kind::Host),
        "<!-- secrets.toml -->" => Some(Kind::Secrets),
        "<!-- publish.toml -->" => Some(Kind::Publish),
        _ => None,
    }
}

/// The ```toml blocks of one Markdown text, with the marker found on the last non-blank line
/// before each.
fn blocks(file: &str, text: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut last: Option<&str> = None;
    let mut open: Option<Block> = None;
    for (i, line) in text.lines().enumerate() {
        if let Some(b) = open.as_mut() {
            if line.trim_start().starts_with("```") {
                out.extend(open.take());
            } else {
                b.text.push_str(line);
                b.text.push('\n');
            }
            continue;
        }
        if line.trim_start().starts_with("```toml") {
            open = Some(Block {
                file: file.to_string(),
                line: i + 1,
                kind: last.and_then(marker),
                text: String::new(),
            });
        }
        if !line.trim().is_empty() {
            last = Some(line);
        }
    }
    assert!(open.is_none(), "{file}: a ```toml block is never closed");
    out
}

/// docs/*.md and README.md.
fn docs() -> Vec<Block> {
    let top = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(top.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    files.sort();
    files.push(top.join("README.md"));
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let name = f.strip_prefix(top).unwrap().display().to_string();
        out.extend(blocks(&name, &text));
    }
    out
}

fn check(b: &Block) -> Result<(), String> {
    match b.kind {
        None => Err(
            "no <!-- cidboot.toml -->, <!-- host.toml --> or <!-- secrets.toml --> marker before it"
                .into(),
        ),
        Some(Kind::Runtime) => Loaded::parse(b.text.clone().into_bytes())
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Some(Kind::Host) => cidboot::host::parse(&b.text, &b.file)
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Some(Kind::Secrets) => cidboot::kms::sealed::SecretsFile::parse(b.text.as_bytes())
            .map(|f| assert!(!f.secrets.is_empty(), "{}: an empty secrets file", b.file))
            .map_err(|e| e.to_string()),
        Some(Kind::Publish) => cidboot::publish::upload::config::parse(&b.text)
            .map(|(_, to)| assert!(!to.is_empty(), "{}: publishes nowhere", b.file)),
    }
}

#[test]
fn every_toml_example_in_docs_parses() {
    let all = docs();
    // The examples this test exists for: if extraction broke, the test would pass vacuously.
    assert!(
        all.iter().any(|b| b.file == "docs/workload.md"),
        "no ```toml block found in docs/workload.md"
    );
    assert!(
        all.iter().any(|b| b.kind == Some(Kind::Host)),
        "no host.toml example found in docs/"
    );
    assert!(
        all.iter().any(|b| b.kind == Some(Kind::Secrets)),
        "no secrets.toml example found in docs/"
    );
    assert!(
        all.iter().any(|b| b.kind == Some(Kind::Publish)),
        "no publish.toml example found in docs/"
    );
    assert!(
        all.iter()
            .any(|b| b.kind == Some(Kind::Runtime) && b.text.contains("[[secrets]]")),
        "no [[secrets]] example found in docs/"
    );
    assert!(
        all.iter()
            .any(|b| b.kind == Some(Kind::Host) && b.text.contains("[credentials]")),
        "no [credentials] example found in docs/"
    );
    let failures: Vec<String> = all
        .iter()
        .filter_map(|b| {
            check(b)
                .err()
                .map(|e| format!("{}:{}: {e}\n{}", b.file, b.line, b.text))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} TOML examples in docs/ do not parse:\n\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );
}

#[test]
fn the_checker_rejects_broken_and_unmarked_examples() {
    let md = "\
<!-- cidboot.toml -->
```toml
[[prestart]]
# ...as above
```

```toml
image = \"ipfs://bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi\"
```

<!-- host.toml -->

```toml
[egress]
listen = \"vsock:any:8000\"
allow = [\"*.ipfs.io:443\", \"ipfs.io:443\"]
```

<!-- host.toml -->
```toml
[egress]
listen = \"vsock:any:8000\"
allow = [\"ipfs.*:443\"]
```
";
    let bs = blocks("example.md", md);
    assert_eq!(bs.len(), 4);
    assert!(check(&bs[0]).is_err(), "a prestart step without a helper");
    assert_eq!(bs[1].kind, None);
    assert!(check(&bs[1]).is_err(), "an unmarked block");
    assert_eq!(bs[2].kind, Some(Kind::Host));
    check(&bs[2]).unwrap();
    assert!(check(&bs[3]).is_err(), "a wildcard not at the start");
    let secrets = blocks(
        "secrets.md",
        "<!-- secrets.toml -->\n```toml\n[[secrets]]\nname = \"../x\"\nkey_id = \"k\"\nciphertext = \"Yw==\"\n```\n",
    );
    assert_eq!(secrets[0].kind, Some(Kind::Secrets));
    assert!(check(&secrets[0]).is_err(), "a secret named ../x");
}

/// The host's ingress example forwards to the port the runtime example's ingress listens on.
#[test]
fn the_ingress_examples_agree() {
    let all = docs();
    let mut targets = Vec::new();
    let mut listens = Vec::new();
    for b in &all {
        match b.kind {
            Some(Kind::Host) => {
                let cfg = cidboot::host::parse(&b.text, &b.file).unwrap();
                for i in cfg.ingress {
                    match i.target {
                        Addr::Vsock { port, .. } => targets.push(port),
                        other => panic!("{}: ingress target {other} is not vsock", b.file),
                    }
                }
            }
            Some(Kind::Runtime) => {
                let l = Loaded::parse(b.text.clone().into_bytes()).unwrap();
                for i in l.config.ingress {
                    match i.listen.parse::<Addr>().unwrap() {
                        Addr::Vsock { port, .. } => listens.push(port),
                        other => panic!("{}: ingress listen {other} is not vsock", b.file),
                    }
                }
            }
            Some(Kind::Secrets | Kind::Publish) | None => {}
        }
    }
    assert!(!targets.is_empty() && !listens.is_empty());
    for t in &targets {
        assert!(
            listens.contains(t),
            "host.toml forwards to enclave vsock port {t}, but no runtime example listens there (it listens on {listens:?})"
        );
    }
}
