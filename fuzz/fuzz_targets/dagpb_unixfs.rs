//! The dag-pb and UnixFS decoders on arbitrary block bytes, as file nodes, directories and
//! HAMT shards. The decoders take only verified blocks, so each input is made one under the
//! dag-pb CID of its own bytes (what a hostile publisher can always do).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let block = bytes::Bytes::copy_from_slice(data);
    let _ = cidboot::fetch::unixfs::Data::decode(&block);
    let cid = cidboot::reference::cid_for(cidboot::reference::CODEC_DAG_PB, data);
    let Ok(block) = cidboot::reference::verify_block(&cid, &block) else {
        return;
    };
    let _ = cidboot::fetch::dagpb::decode(&block);
    let _ = cidboot::fetch::unixfs::FileNode::parse(&block);
    let _ = cidboot::fetch::unixfs::Directory::parse(&block);
    let _ = cidboot::fetch::hamt::is_shard(&block);
    let depth = data.first().map_or(0, |b| usize::from(b % 9));
    let _ = cidboot::fetch::hamt::Shard::parse(&block, &data[..depth.min(data.len())]);
});
