//! The dag-pb and UnixFS decoders on arbitrary block bytes, as file nodes, directories and
//! HAMT shards.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let block = bytes::Bytes::copy_from_slice(data);
    let _ = cidboot::fetch::dagpb::decode(&block);
    let _ = cidboot::fetch::unixfs::Data::decode(&block);
    let cid = cidboot::reference::cid_for(cidboot::reference::CODEC_DAG_PB, data);
    let _ = cidboot::fetch::unixfs::FileNode::parse(&cid, block.clone());
    let _ = cidboot::fetch::unixfs::Directory::parse(&cid, &block);
    let depth = data.first().map_or(0, |b| usize::from(b % 9));
    let _ = cidboot::fetch::hamt::Shard::parse(&cid, &block, &data[..depth.min(data.len())]);
});
