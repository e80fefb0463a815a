fn main() -> std::process::ExitCode {
    // A sandbox's stage 1: cidboot re-executed by itself, before any thread exists.
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(cidboot::launch::sandbox::ARG) {
        cidboot::launch::sandbox::main(&args);
    }
    // As the first process of an enclave, cidboot boots it and never returns.
    if std::process::id() == 1 {
        cidboot::init::run();
    }
    cidboot::cli::main()
}
