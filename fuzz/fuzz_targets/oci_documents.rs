//! Index, manifest and config parsing, and the checks cidboot applies to what they say.
#![no_main]
use libfuzzer_sys::fuzz_target;
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};

fuzz_target!(|data: &[u8]| {
    if let Ok(i) = serde_json::from_slice::<ImageIndex>(data) {
        for d in i.manifests() {
            let _ = cidboot::oci::sha256_hex(d);
            let _ = cidboot::oci::check_bytes(d, "fuzz", data);
        }
    }
    if let Ok(m) = serde_json::from_slice::<ImageManifest>(data) {
        for l in m.layers() {
            let _ = cidboot::oci::layer_compression(l.media_type());
        }
    }
    let _ = serde_json::from_slice::<ImageConfiguration>(data);
});
