//! The bundled sample workload: greets, then asks cidboot for an attestation document bound
//! to a fresh nonce and prints it, so that anyone can check it with `cidboot verify`. On the
//! way it reports what its sandbox denies it (the NSM device, vsock sockets). With `--secrets
//! NAME|PATH…` it first prints a hash of each secret it was given; under a KMS proxy, it asks
//! KMS for random bytes through it.

fn main() {
    let greeting = std::env::var("GREETING").unwrap_or_else(|_| "hello".into());
    let args: Vec<String> = std::env::args().skip(1).collect();
    println!("{greeting}");
    if !args.is_empty() {
        println!("args: {}", args.join(" "));
    }
    // Test modes for the resource limits and the secrets; without them, the sample does what
    // it always did.
    match args.first().map(String::as_str) {
        Some("--allocate-forever") => cidboot_sample::allocate_forever(),
        Some("--fork-forever") => std::process::exit(cidboot_sample::fork_forever()),
        // A hash of each secret named (an environment variable, or a file's path), then on.
        Some("--secrets") => {
            for what in &args[1..] {
                println!("{}", cidboot_sample::describe_secret(what));
            }
        }
        _ => {}
    }
    if let Ok(cwd) = std::env::current_dir() {
        println!("cwd: {}", cwd.display());
    }
    // What the sandbox leaves this process: no NSM device, no vsock.
    println!("sandbox: open /dev/nsm: {}", cidboot_sample::try_open("/dev/nsm"));
    println!("sandbox: socket(AF_VSOCK): {}", cidboot_sample::try_vsock());
    // With cidboot's KMS proxy ([kms_proxy]), 32 random bytes from KMS through it.
    if std::env::var_os("AWS_ENDPOINT_URL_KMS").is_some() {
        println!(
            "kms proxy: GenerateRandom {}",
            cidboot_sample::kms_summary("TrentService.GenerateRandom", r#"{"NumberOfBytes":32}"#)
        );
    }
    if std::env::var_os("CIDBOOT_ATTESTATION_URL").is_none() {
        return;
    }
    let result = cidboot_sample::fresh_nonce().and_then(|n| cidboot_sample::attest(&n).map(|d| (n, d)));
    match result {
        Ok((nonce, doc)) => {
            println!("attestation nonce: {nonce}");
            println!("attestation document: {doc}");
        }
        Err(e) => {
            eprintln!("attestation failed: {e}");
            std::process::exit(1);
        }
    }
}
