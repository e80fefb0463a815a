//! The publisher configuration (`cidboot publish --config publish.toml`): the destinations and
//! what goes with them, so that a release pipeline's command line stays short. It holds no
//! secret: tokens and keys come from the environment (or files it names) only.

use serde::Deserialize;

use super::Destination;

/// Largest configuration file read.
pub const MAX_CONFIG: u64 = 64 << 10;

/// What `publish.toml` says; every key is optional, and the command line's flags win.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishConfig {
    /// Where to upload, in order (as `--to`).
    #[serde(default)]
    pub to: Vec<String>,
    /// Multiaddrs handed to pinning services (as `--origin`).
    #[serde(default)]
    pub origins: Vec<String>,
    /// The pin's name (as `--name`).
    pub name: Option<String>,
    /// As `--pin-timeout`.
    pub pin_timeout_secs: Option<u64>,
    /// `[check]`: check the image on these gateways after the uploads (as `--check`).
    pub check: Option<CheckConfig>,
}

/// `[check]` of `publish.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckConfig {
    /// Gateway base URLs (as `--gateway`).
    #[serde(default)]
    pub gateways: Vec<String>,
    /// As `--min`.
    pub min: Option<usize>,
}

/// Parses `publish.toml` and its destinations; a key it does not know (a `token`, say) is
/// refused by name.
pub fn parse(text: &str) -> Result<(PublishConfig, Vec<Destination>), String> {
    let c: PublishConfig = toml::from_str(text).map_err(|e| {
        let m = e.to_string();
        if m.contains("unknown field `token") {
            format!("{m}\ntokens are never kept in publish.toml: set CIDBOOT_RPC_TOKEN or CIDBOOT_PINS_TOKEN (or their _FILE variants)")
        } else {
            m
        }
    })?;
    let dests =
        c.to.iter()
            .map(|d| d.parse::<Destination>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("to: {e}"))?;
    if let Some(ch) = &c.check {
        if ch.gateways.is_empty() {
            return Err("[check]: give gateways = [\"https://…\", …]".into());
        }
        if ch.min.is_some_and(|m| m == 0 || m > ch.gateways.len()) {
            return Err(format!(
                "[check] min: a number from 1 to the {} gateway(s) listed",
                ch.gateways.len()
            ));
        }
    }
    Ok((c, dests))
}

/// Reads and parses `path`, refusing a file over [`MAX_CONFIG`] before reading it.
pub fn load(path: &std::path::Path) -> Result<(PublishConfig, Vec<Destination>), String> {
    let what = path.display();
    let size = std::fs::metadata(path)
        .map_err(|e| format!("{what}: {e}"))?
        .len();
    if size > MAX_CONFIG {
        return Err(format!(
            "{what}: {size} bytes, over the {MAX_CONFIG}-byte limit of a publisher configuration"
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{what}: {e}"))?;
    parse(&text).map_err(|e| format!("{what}: {e}"))
}
