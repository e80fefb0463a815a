//! Stands in for EigenCloud's tls-client in tests: requires the KMS secret to be present.

fn main() {
    match std::env::var("KMS_SECRET") {
        Ok(s) if !s.is_empty() => println!("fake-tls-client: have KMS secret, certificate ready"),
        _ => {
            eprintln!("fake-tls-client: no KMS_SECRET in the environment");
            std::process::exit(4);
        }
    }
}
