fn main() -> std::process::ExitCode {
    // As the first process of an enclave, cidboot boots it and never returns.
    if std::process::id() == 1 {
        cidboot::init::run();
    }
    cidboot::cli::main()
}
