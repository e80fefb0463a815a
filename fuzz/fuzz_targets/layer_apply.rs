//! A tar stream applied into a fresh root with small limits: errors are fine, escaping the
//! root or panicking is not.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else { return };
    let root_path = dir.path().join("root");
    if std::fs::create_dir(&root_path).is_err() {
        return;
    }
    let limits = cidboot::apply::ApplyLimits {
        max_entries: 256,
        max_pax_size: 64 * 1024,
        ..Default::default()
    };
    if let Ok(root) = cidboot::apply::fs::Root::open(&root_path) {
        let _ = cidboot::apply::layer::apply_tar(&root, data, &limits);
    }
    // Nothing may appear beside the root.
    let entries: Vec<_> = std::fs::read_dir(dir.path())
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert_eq!(
        entries,
        vec![std::ffi::OsString::from("root")],
        "an entry escaped the root"
    );
});
