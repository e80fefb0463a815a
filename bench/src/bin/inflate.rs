//! The bound cidboot chases: a bare single-thread inflate of each layer (zlib-rs, as cidboot
//! uses), into nothing. Prints the seconds per layer as JSON.

use std::io::Read;
use std::time::Instant;

fn main() {
    let mut secs = Vec::new();
    for p in std::env::args().skip(1) {
        let data = std::fs::read(&p).expect("read layer");
        let start = Instant::now();
        let mut d = flate2::read::MultiGzDecoder::new(&data[..]);
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        loop {
            let k = d.read(&mut buf).expect("inflate");
            if k == 0 {
                break;
            }
            n += k as u64;
        }
        secs.push(start.elapsed().as_secs_f64());
        eprintln!("{p}: {n} bytes");
    }
    println!("{}", serde_json::json!({ "seconds": secs }));
}
