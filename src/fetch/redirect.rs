//! Following gateway redirects: dweb.link sends `/ipfs/<CID>?format=raw` to its subdomain
//! form, ipfs.io sends raw-block requests to trustless-gateway.link. A redirect target is just
//! another untrusted gateway: what it sends is verified exactly as before.

use http::Uri;
use tracing::info;

use super::FetchError;
use crate::transport::http::{Origin, Response};

/// Most redirects followed for one request.
pub const MAX_REDIRECTS: usize = 5;

fn is_redirect(status: u16) -> bool {
    matches!(status, 301 | 302 | 303 | 307 | 308)
}

/// Where `location` leads from a request for `path` at `from`. An `https` request is never
/// sent on to plain `http` unless `allow_http` (the user gave a plain-http gateway).
pub fn target(
    from: &Origin,
    path: &str,
    location: &str,
    allow_http: bool,
) -> Result<(Origin, String), FetchError> {
    let bad = |why: &str| FetchError::Redirect(format!("to {location:?}: {why}"));
    if location.is_empty() || location.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(bad("not a URL"));
    }
    let (origin, path_and_query) = if location.contains("://") {
        let uri: Uri = location
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        let (origin, _) = Origin::parse(location).map_err(|e| bad(&e.to_string()))?;
        let pq = uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        (origin, pq)
    } else if location.starts_with("//") {
        return Err(bad("scheme-relative locations are not followed"));
    } else if location.starts_with('/') {
        (from.clone(), location.to_string())
    } else {
        // Relative to the directory of the current path.
        let base = path.split('?').next().unwrap_or("");
        let dir = match base.rfind('/') {
            Some(i) => &base[..=i],
            None => "/",
        };
        (from.clone(), format!("{dir}{location}"))
    };
    if from.tls && !origin.tls && !allow_http {
        return Err(bad("from https to plain http is refused"));
    }
    Ok((origin, path_and_query))
}

impl super::Gateways {
    /// `GET path` at the gateway, following up to [`MAX_REDIRECTS`] redirects.
    pub(super) async fn get_following(
        &self,
        gw: &super::gateway::Gateway,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Response, FetchError> {
        let mut origin = gw.origin.clone();
        let mut path = path.to_string();
        for _ in 0..=MAX_REDIRECTS {
            let resp = self.client().get(&origin, &path, headers).await?;
            if !is_redirect(resp.status.as_u16()) {
                return Ok(resp);
            }
            let location = resp.header("location").ok_or_else(|| {
                FetchError::Redirect(format!("HTTP {} without a Location", resp.status))
            })?;
            let (next, next_path) = target(&origin, &path, location, !gw.origin.tls)?;
            info!(gateway = %gw.label, from = %format!("{origin}{path}"), to = %format!("{next}{next_path}"), status = resp.status.as_u16(), "gateway redirected");
            origin = next;
            path = next_path;
        }
        Err(FetchError::Redirect(format!(
            "more than {MAX_REDIRECTS} redirects, the last to {origin}{path}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(url: &str) -> Origin {
        Origin::parse(url).unwrap().0
    }

    #[test]
    fn resolves_locations() {
        let dweb = o("https://dweb.link");
        let (to, p) = target(
            &dweb,
            "/ipfs/bafy?format=raw",
            "https://bafy.ipfs.dweb.link/?format=raw",
            false,
        )
        .unwrap();
        assert_eq!(
            (to.host.as_str(), to.port, to.tls),
            ("bafy.ipfs.dweb.link", 443, true)
        );
        assert_eq!(p, "/?format=raw");
        let (to, p) = target(&dweb, "/ipfs/x?format=raw", "/other/x?format=raw", false).unwrap();
        assert_eq!((to, p.as_str()), (dweb.clone(), "/other/x?format=raw"));
        let (_, p) = target(&dweb, "/ipfs/a/b?format=car", "c?format=car", false).unwrap();
        assert_eq!(p, "/ipfs/a/c?format=car");
        let (to, _) = target(&dweb, "/", "https://gw.example:8443/ipfs/x", false).unwrap();
        assert_eq!(to.port, 8443);
        // Never down to plain http from https, unless the user's gateway was plain http.
        let e = target(&dweb, "/", "http://evil.example/ipfs/x", false).unwrap_err();
        assert!(e.to_string().contains("plain http is refused"), "{e}");
        assert!(target(
            &o("http://127.0.0.1:8080"),
            "/",
            "http://127.0.0.1:9/x",
            true
        )
        .is_ok());
        for bad in ["ftp://x/y", "//host/path", "https://"] {
            assert!(target(&dweb, "/", bad, false).is_err(), "{bad}");
        }
    }
}
