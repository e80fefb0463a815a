//! A helper that always fails, for tests of the prestart chain.

fn main() {
    eprintln!("fail-helper: refusing");
    std::process::exit(3);
}
