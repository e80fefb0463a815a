//! The bound cidboot chases: a bare single-thread inflate of each layer (zlib-rs or zstd, as
//! cidboot uses), into nothing. Prints the seconds per layer as JSON.
//!
//! Also the hashing that verification cannot skip, timed with the same sha2 crate: every
//! compressed byte twice (its block's CID, then the blob's digest) and every uncompressed byte
//! once (the diff_id). Inflate and hashing together, spread over the cores, are the floor for a
//! verifying pull on this machine, before any file is written.

use std::io::Read;
use std::time::Instant;

use sha2::{Digest, Sha256};

fn hash_seconds(data: &[u8]) -> f64 {
    let start = Instant::now();
    for block in data.chunks(1 << 20) {
        std::hint::black_box(Sha256::digest(block));
    }
    std::hint::black_box(Sha256::digest(data));
    start.elapsed().as_secs_f64()
}

fn main() {
    let mut secs = Vec::new();
    let mut hash = 0.0;
    for p in std::env::args().skip(1) {
        let data = std::fs::read(&p).expect("read layer");
        let start = Instant::now();
        let mut d: Box<dyn Read> = if data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Box::new(zstd::stream::read::Decoder::new(&data[..]).expect("zstd"))
        } else {
            Box::new(flate2::read::MultiGzDecoder::new(&data[..]))
        };
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
        // Hashing speed does not depend on content: the diff_id's share is scaled from the
        // compressed bytes' rate.
        let compressed = hash_seconds(&data);
        hash += compressed + compressed / 2.0 * (n as f64 / data.len() as f64);
        eprintln!("{p}: {n} bytes");
    }
    println!(
        "{}",
        serde_json::json!({ "seconds": secs, "hash_seconds": hash })
    );
}
