//! Stands in for EigenCloud's kms-client in tests: writes an env file of "released" secrets.
//! Usage: fake-kms-client OUT_FILE

fn main() {
    let out = std::env::args().nth(1).unwrap_or_else(|| "/run/kms.env".into());
    if let Some(dir) = std::path::Path::new(&out).parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let body = "# released by the fake KMS\nexport KMS_SECRET=\"opensesame\"\nKMS_KEY_ID=key-1\n";
    if let Err(e) = std::fs::write(&out, body) {
        eprintln!("fake-kms-client: {out}: {e}");
        std::process::exit(2);
    }
    println!("fake-kms-client: wrote {out}");
}
