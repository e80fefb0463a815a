//! The CAR reader on arbitrary bytes: every section read, nothing trusted; a block that
//! verifies is decoded as part of a file.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async {
        if let Ok(mut r) = cidboot::fetch::car::CarReader::new(data).await {
            let _ = r.roots();
            for _ in 0..10_000 {
                match r.next_block().await {
                    Ok(Some((cid, block))) => {
                        if let Ok(b) = cidboot::reference::verify_block(&cid, &block) {
                            let _ = cidboot::fetch::unixfs::FileNode::parse(&b);
                        }
                    }
                    _ => break,
                }
            }
        }
    });
});
