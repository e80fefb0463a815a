//! Helpers from dependency images, the EigenCloud way: each image is named by reference and
//! pinned by its manifest digest, resolved and verified through the same trustless pipeline
//! and limits as the workload, applied into a scratch root of its own, and only the regular
//! files directly under the helper directory (`/eigen/bin`) are taken from it. Nothing else of
//! the image reaches the workload's root.

use std::path::Path;
use std::sync::Arc;

use tracing::info;

use super::BootError;
use crate::apply::{self, ApplyLimits};
use crate::config::Helpers;
use crate::fetch::Gateways;
use crate::launch::helpers::{self, Helper};
use crate::measure::HelperImage;
use crate::oci::{self, Limits, OciError, Platform, Selector};
use crate::reference::ImageRef;

/// One dependency image: what is measured of it, and its helpers.
pub struct FromImage {
    /// The image as the event log records it.
    pub measured: HelperImage,
    /// Its `/eigen/bin` files, verified and sealed.
    pub helpers: Vec<Helper>,
}

fn fail(image: &str, reason: impl std::fmt::Display) -> BootError {
    BootError::HelperImage {
        image: image.to_string(),
        reason: reason.to_string(),
    }
}

/// Fetches, verifies and extracts every `[[helpers.images]]` entry, in order. `scratch` is a
/// directory for their roots, removed again before this returns.
pub async fn fetch_all(
    cfg: &Helpers,
    gateways: &Arc<Gateways>,
    platform: &Platform,
    limits: &Limits,
    apply_limits: &ApplyLimits,
    scratch: &Path,
    observer: Arc<dyn apply::Observer>,
) -> Result<Vec<FromImage>, BootError> {
    let mut out = Vec::new();
    for (i, img) in cfg.images.iter().enumerate() {
        let r = ImageRef::parse(&img.image).map_err(|e| fail(&img.image, e))?;
        let resolved = resolve_pinned(gateways, &r, &img.digest, platform, limits)
            .await
            .map_err(|e| fail(&img.image, e))?;
        let manifest = resolved.manifest_desc.digest().to_string();
        let dir = scratch.join(format!("helper-image-{i}"));
        let (root, spill) = (dir.join("root"), dir.join("spill"));
        for d in [&root, &spill] {
            std::fs::create_dir_all(d)
                .map_err(|e| fail(&img.image, format!("{}: {e}", d.display())))?;
        }
        let extracted = async {
            apply::apply_observed(
                gateways.clone(),
                Arc::new(resolved),
                &root,
                &spill,
                apply_limits,
                observer.clone(),
            )
            .await
            .map_err(|e| fail(&img.image, e))?;
            let root = apply::fs::Root::open(&root).map_err(|e| fail(&img.image, e))?;
            helpers::collect(&root, &cfg.dir, &manifest).map_err(|e| fail(&img.image, e))
        }
        .await;
        let _ = std::fs::remove_dir_all(&dir);
        let found = extracted?;
        info!(image = %r.canonical(), manifest = %manifest, helpers = ?found.iter().map(|h| h.name.as_str()).collect::<Vec<_>>(), "helper image verified");
        out.push(FromImage {
            measured: HelperImage {
                reference: r.canonical(),
                pinned_digest: img.digest.clone(),
                manifest_digest: manifest,
                helpers: found
                    .iter()
                    .map(|h| (h.name.clone(), h.digest.clone()))
                    .collect(),
            },
            helpers: found,
        });
    }
    Ok(out)
}

/// Resolves the image so that `pinned` is either the digest of the index.json entry taken
/// (an image index, whose manifest for the platform is then used, or the manifest itself) or
/// the digest of the platform's manifest found by the usual selection.
async fn resolve_pinned(
    gateways: &Gateways,
    r: &ImageRef,
    pinned: &str,
    platform: &Platform,
    limits: &Limits,
) -> Result<oci::Resolved, String> {
    let by_digest = Selector::new(platform.clone(), None, Some(pinned.to_string()))
        .map_err(|e| e.to_string())?;
    match oci::resolve(gateways, &r.cid, &by_digest, limits).await {
        Ok(resolved) => return Ok(resolved),
        Err(OciError::Select(_)) => {}
        Err(e) => return Err(e.to_string()),
    }
    let usual = Selector::new(platform.clone(), None, None).map_err(|e| e.to_string())?;
    let resolved = oci::resolve(gateways, &r.cid, &usual, limits)
        .await
        .map_err(|e| e.to_string())?;
    let manifest = resolved.manifest_desc.digest().to_string();
    if manifest != pinned {
        return Err(format!(
            "its manifest for {platform} is {manifest}, but the configuration pins {pinned} (which is not an index.json entry either)"
        ));
    }
    Ok(resolved)
}

/// Every helper of the boot, each name from exactly one source.
pub fn merge(pinned: Vec<Helper>, images: &[FromImage]) -> Result<Vec<Helper>, BootError> {
    let mut all = pinned;
    for img in images {
        for h in &img.helpers {
            if let Some(other) = all.iter().find(|o| o.name == h.name) {
                let from = |x: &Helper| match &x.source {
                    Some(m) => format!("the helper image with manifest {m}"),
                    None => "[helpers.pins]".to_string(),
                };
                return Err(BootError::HelperImage {
                    image: img.measured.reference.clone(),
                    reason: format!(
                        "helper {} is provided by both {} and {}",
                        h.name,
                        from(other),
                        from(h)
                    ),
                });
            }
            all.push(h.clone());
        }
    }
    Ok(all)
}
