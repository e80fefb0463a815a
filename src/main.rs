fn main() -> std::process::ExitCode {
    cidboot::cli::main()
}
