//! The CAR reader on arbitrary bytes: every section read, nothing trusted.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    rt.block_on(async {
        if let Ok(mut r) = cidboot::fetch::car::CarReader::new(data).await {
            let _ = r.roots();
            for _ in 0..10_000 {
                match r.next_block().await {
                    Ok(Some((cid, block))) => {
                        let _ = cidboot::reference::verify_block(&cid, &block);
                    }
                    _ => break,
                }
            }
        }
    });
});
