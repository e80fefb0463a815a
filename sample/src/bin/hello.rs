//! The bundled sample workload: greets, and shows what it was started with.

fn main() {
    let greeting = std::env::var("GREETING").unwrap_or_else(|_| "hello".into());
    let args: Vec<String> = std::env::args().skip(1).collect();
    println!("{greeting}");
    if !args.is_empty() {
        println!("args: {}", args.join(" "));
    }
    if let Ok(cwd) = std::env::current_dir() {
        println!("cwd: {}", cwd.display());
    }
}
