//! Memory that hostile DAGs cannot grow: each fetch runs as a `cidboot` process against a real
//! `cidboot gateway` on loopback serving a CAR built here, and its peak resident memory (the
//! kernel's `ru_maxrss` of the child) must stay within the bounds docs/limits.md gives,
//! whatever the DAG's shape.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::Stdio;

use bytes::Bytes;
use cid::Cid;
use cidboot_ipld::block::{cid_for, CODEC_DAG_PB, CODEC_RAW, MAX_BLOCK_SIZE};
use cidboot_ipld::dagpb::{PbLink, PbNode};
use cidboot_ipld::hamt::murmur3_x64_64;
use cidboot_ipld::unixfs::{Data, Kind};
use common::*;
use sha2::Digest;

const MIB: u64 = 1 << 20;
/// What docs/limits.md allows a range plan: 8 blocks ahead, a node decoding, its pieces.
const PLAN_BOUND: u64 = (16 + 20 + 6) * MIB;
/// What it allows one walk: 8 blocks ahead, 262,144 links waiting, a node decoding.
const WALK_BOUND: u64 = (16 + 28 + 20) * MIB;
/// What it allows a HAMT read: 8 shard blocks, the next level's 65,536 links, 100,000
/// entries of at most 255-byte names.
const HAMT_BOUND: u64 = (16 + 10 + 40) * MIB;
/// The allocator's and the measurement's slack.
const SLACK: u64 = 16 * MIB;

/// The peak resident memory of a pull of a tiny image: the process, its runtime, TLS and
/// HTTP, before any DAG counts.
fn baseline(work: &Path) -> u64 {
    let layer = raw(b"a tiny layer");
    let [manifest, config] = manifest_for(
        &layer.0,
        12,
        &format!("sha256:{}", sha256_hex(b"a tiny layer")),
    );
    let car = work.join("tiny.car");
    write_car(&car, &manifest.0, &[&manifest, &config, &layer]);
    let gateway = Gateway::start_plain(std::slice::from_ref(&car));
    let (out, peak) = run_peak(&[
        "pull",
        &format!("ipfs://{}", manifest.0),
        "--gateway",
        &gateway.url,
        "--oci-layout",
        work.join("tiny").to_str().unwrap(),
    ]);
    assert!(out.ok, "{}", out.stderr);
    eprintln!("baseline: {} MiB", peak / MIB);
    peak
}

/// Runs cidboot (info logging) and returns its output and peak resident memory in bytes.
#[allow(clippy::zombie_processes)] // reaped by wait4, which also gives its peak memory
fn run_peak(args: &[&str]) -> (Out, u64) {
    let mut child = cidboot()
        .args(args)
        .env("CIDBOOT_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let o = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let e = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value, which wait4 fills in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, writing into the two locals above.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32);
    let out = Out {
        ok: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        stdout: String::from_utf8_lossy(&o.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&e.join().unwrap()).into_owned(),
    };
    (out, usage.ru_maxrss as u64 * 1024)
}

/// A dag-pb UnixFS file node over `children` (CID, content size), with inline bytes.
fn file_node(inline: &[u8], children: &[(Cid, u64)]) -> (Cid, Vec<u8>) {
    let sizes: Vec<u64> = children.iter().map(|c| c.1).collect();
    let data = Data {
        kind: Kind::File,
        data: (!inline.is_empty()).then(|| Bytes::copy_from_slice(inline)),
        filesize: Some(inline.len() as u64 + sizes.iter().sum::<u64>()),
        blocksizes: sizes,
        hash_type: None,
        fanout: None,
    };
    let node = PbNode {
        links: children
            .iter()
            .map(|(c, _)| PbLink {
                cid: *c,
                name: None,
                tsize: None,
            })
            .collect(),
        data: Some(Bytes::from(data.encode())),
    };
    let bytes = cidboot_ipld::dagpb::encode(&node);
    assert!(bytes.len() <= MAX_BLOCK_SIZE, "{} bytes", bytes.len());
    (cid_for(CODEC_DAG_PB, &bytes), bytes)
}

/// The most links to `child` (of `size` bytes) one node can hold within the block limit.
fn widest_node(child: Cid, size: u64) -> (Cid, Vec<u8>, usize) {
    let mut n = 49_000;
    loop {
        let kids = vec![(child, size); n];
        let sizes: Vec<u64> = vec![size; n];
        let approx = n * (child.to_bytes().len() + 4) + sizes.len() * 3 + 16;
        if approx <= MAX_BLOCK_SIZE {
            let (c, b) = file_node(b"", &kids);
            return (c, b, n);
        }
        n -= 500;
    }
}

fn raw(data: &[u8]) -> (Cid, Vec<u8>) {
    (cid_for(CODEC_RAW, data), data.to_vec())
}

fn write_car(path: &Path, root: &Cid, blocks: &[&(Cid, Vec<u8>)]) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    f.write_all(&cidboot_ipld::car::encode_header(root))
        .unwrap();
    for (c, b) in blocks {
        cidboot_ipld::car::write_section(&mut f, c, b).unwrap();
    }
    f.flush().unwrap();
}

/// A manifest stored as one raw block whose config and only layer are found by `ipfs://` URLs:
/// the manifest and config blocks, for a layer `layer` of `size` bytes with this digest.
fn manifest_for(layer: &Cid, size: u64, digest: &str) -> [(Cid, Vec<u8>); 2] {
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", "0".repeat(64))]},
    });
    let config = raw(&serde_json::to_vec(&config).unwrap());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": {
            "mediaType": MT_CONFIG,
            "digest": format!("sha256:{}", sha256_hex(&config.1)),
            "size": config.1.len(),
            "urls": [format!("ipfs://{}", config.0)],
        },
        "layers": [{
            "mediaType": MT_LAYER_GZ,
            "digest": digest,
            "size": size,
            "urls": [format!("ipfs://{layer}")],
        }],
    });
    [raw(&serde_json::to_vec(&manifest).unwrap()), config]
}

#[test]
fn one_huge_node_linked_hundreds_of_times_is_planned_and_streamed_in_bounded_memory() {
    let work = tempfile::tempdir().unwrap();
    // A 64-byte leaf; a node of about 49,000 links to it (2 MiB, the block limit); a layer
    // root linking that node 320 times. Legal (a DAG may link a block many times), 1 GB of
    // content, and 15 million leaves.
    let leaf = raw(&[b'x'; 64]);
    let (node_cid, node, links) = widest_node(leaf.0, 64);
    let node_size = links as u64 * 64;
    assert!(node.len() > MAX_BLOCK_SIZE - 100_000, "{}", node.len());
    let root = file_node(b"", &vec![(node_cid, node_size); 320]);
    let size = node_size * 320;
    let mut h = sha2::Sha256::new();
    let chunk = vec![b'x'; node_size as usize];
    for _ in 0..320 {
        h.update(&chunk);
    }
    let digest = format!("sha256:{}", hex::encode(h.finalize()));
    let [manifest, config] = manifest_for(&root.0, size, &digest);
    let car = work.path().join("hostile.car");
    let node = (node_cid, node);
    write_car(
        &car,
        &manifest.0,
        &[&manifest, &config, &root, &node, &leaf],
    );
    let gateway = Gateway::start_plain(std::slice::from_ref(&car));
    // In front of it, a gateway that serves raw blocks only: the whole-file stream after the
    // plan is then walked here, block by block.
    let filter = FormatFilter::start(&gateway.url, "car");
    let out_dir = work.path().join("out");
    let (out, peak) = run_peak(&[
        "pull",
        &format!("ipfs://{}", manifest.0),
        "--gateway",
        &filter.url,
        "--object-deadline",
        "20",
        "--oci-layout",
        out_dir.to_str().unwrap(),
    ]);
    // The plan stopped at its cap, with the node fetched once and held once...
    assert!(
        out.stderr
            .contains("the file's DAG has more pieces than a range plan holds"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("max=262144"), "{}", out.stderr);
    // ...and the stream that took over ran into the object deadline, holding no more.
    assert!(!out.ok);
    assert!(out.stderr.contains("(deadline)"), "{}", out.stderr);
    let bound = baseline(work.path()) + PLAN_BOUND + WALK_BOUND + SLACK;
    eprintln!(
        "peak resident memory: {} MiB (bound {} MiB)",
        peak / MIB,
        bound / MIB
    );
    assert!(peak < bound, "peak {} MiB", peak / MIB);
}

#[test]
fn a_dag_too_wide_to_walk_is_refused_naming_the_cap() {
    let work = tempfile::tempdir().unwrap();
    // Eight levels, each a 2 MiB node of about 49,000 links: the first to the next level,
    // the others to a 1-byte leaf. A small file (under 3 MB), but a depth-first walk of it
    // keeps 8 × 49,000 links waiting.
    let leaf = raw(b"y");
    let mut blocks = vec![leaf.clone()];
    let mut below: Option<(Cid, u64)> = None;
    for _ in 0..8 {
        let (_, _, n) = widest_node(leaf.0, 1);
        let mut kids = vec![(leaf.0, 1u64); n - 1];
        if let Some(b) = below {
            kids.insert(0, b);
        }
        let size = kids.iter().map(|k| k.1).sum();
        let node = file_node(b"", &kids);
        below = Some((node.0, size));
        blocks.push(node);
    }
    let (root, size) = below.unwrap();
    let [manifest, config] = manifest_for(&root, size, &format!("sha256:{}", "1".repeat(64)));
    blocks.push(manifest.clone());
    blocks.push(config);
    let car = work.path().join("wide.car");
    let refs: Vec<&(Cid, Vec<u8>)> = blocks.iter().collect();
    write_car(&car, &manifest.0, &refs);
    let gateway = Gateway::start_plain(std::slice::from_ref(&car));
    let out_dir = work.path().join("out");
    let t0 = std::time::Instant::now();
    let (out, peak) = run_peak(&[
        "pull",
        &format!("ipfs://{}", manifest.0),
        "--gateway",
        &gateway.url,
        "--oci-layout",
        out_dir.to_str().unwrap(),
    ]);
    assert!(!out.ok, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("too wide to walk: more than 262144 links would wait at once"),
        "{}",
        out.stderr
    );
    assert!(t0.elapsed() < std::time::Duration::from_secs(60));
    let bound = baseline(work.path()) + WALK_BOUND + SLACK;
    eprintln!(
        "peak resident memory: {} MiB (bound {} MiB)",
        peak / MIB,
        bound / MIB
    );
    assert!(peak < bound, "peak {} MiB", peak / MIB);
}

/// A HAMT shard over `links` (slot, name suffix, CID) in slot order.
fn shard(links: &[(u8, String, Cid)]) -> (Cid, Vec<u8>) {
    let mut bitfield = [0u8; 32];
    for (slot, _, _) in links {
        bitfield[31 - usize::from(slot / 8)] |= 1 << (slot % 8);
    }
    let first = bitfield.iter().position(|b| *b != 0).unwrap_or(31);
    let data = Data {
        kind: Kind::HamtShard,
        data: Some(Bytes::copy_from_slice(&bitfield[first..])),
        filesize: None,
        blocksizes: Vec::new(),
        hash_type: Some(0x22),
        fanout: Some(256),
    };
    let node = PbNode {
        links: links
            .iter()
            .map(|(slot, name, cid)| PbLink {
                cid: *cid,
                name: Some(format!("{slot:02X}{name}").into_bytes()),
                tsize: None,
            })
            .collect(),
        data: Some(Bytes::from(data.encode())),
    };
    let bytes = cidboot_ipld::dagpb::encode(&node);
    (cid_for(CODEC_DAG_PB, &bytes), bytes)
}

fn pull_directory(work: &Path, root: &Cid, blocks: &[&(Cid, Vec<u8>)]) -> (Out, u64) {
    let car = work.join(format!("{root}.car"));
    write_car(&car, root, blocks);
    let gateway = Gateway::start_plain(std::slice::from_ref(&car));
    run_peak(&[
        "pull",
        &format!("ipfs://{root}"),
        "--gateway",
        &gateway.url,
        "--oci-layout",
        work.join(format!("out-{root}")).to_str().unwrap(),
    ])
}

#[test]
fn wide_hamt_levels_are_read_in_bounded_memory() {
    let work = tempfile::tempdir().unwrap();
    let bound = baseline(work.path()) + HAMT_BOUND + SLACK;
    // A full shard of entries with 255-byte names, valid in slot 0 of the root: about 70 kB.
    let target = raw(b"an entry").0;
    let mut by_slot: Vec<Option<String>> = vec![None; 256];
    let mut i = 0u64;
    while by_slot.iter().any(Option::is_none) {
        let name = format!("{i:0255}");
        let h = murmur3_x64_64(name.as_bytes());
        if h[0] == 0 && by_slot[usize::from(h[1])].is_none() {
            by_slot[usize::from(h[1])] = Some(name);
        }
        i += 1;
    }
    let entries: Vec<(u8, String, Cid)> = by_slot
        .into_iter()
        .enumerate()
        .map(|(s, n)| (s as u8, n.unwrap(), target))
        .collect();
    let full = shard(&entries);
    assert!(full.1.len() > 65_000, "{}", full.1.len());

    // Level two holds that shard 65,024 times (256 sub-shards of 254 links each), each
    // a place its entries' hashes do not lead to: collected whole, it would be 4.5 GB.
    let middle = shard(
        &(0..254u8)
            .map(|s| (s, String::new(), full.0))
            .collect::<Vec<_>>(),
    );
    let top = shard(
        &(0..=255u8)
            .map(|s| (s, String::new(), middle.0))
            .collect::<Vec<_>>(),
    );
    let (out, peak) = pull_directory(work.path(), &top.0, &[&top, &middle, &full]);
    assert!(!out.ok);
    assert!(
        out.stderr.contains("where its hash does not lead"),
        "{}",
        out.stderr
    );
    eprintln!(
        "peak resident memory: {} MiB (bound {} MiB)",
        peak / MIB,
        bound / MIB
    );
    assert!(peak < bound, "peak {} MiB", peak / MIB);

    // Shards of shards only, 256 wide at every level: level two alone would be 65,536
    // blocks, past the cap, which stops the read before the level is kept.
    let mut below = shard(&[(7, "entry".into(), target)]);
    let mut blocks = vec![below.clone()];
    for _ in 0..3 {
        let s = shard(
            &(0..=255u8)
                .map(|s| (s, String::new(), below.0))
                .collect::<Vec<_>>(),
        );
        blocks.push(s.clone());
        below = s;
    }
    let refs: Vec<&(Cid, Vec<u8>)> = blocks.iter().collect();
    let (out, peak) = pull_directory(work.path(), &below.0, &refs);
    assert!(!out.ok);
    assert!(
        out.stderr
            .contains("has more than 65536 shard blocks (the limit)"),
        "{}",
        out.stderr
    );
    eprintln!(
        "peak resident memory: {} MiB (bound {} MiB)",
        peak / MIB,
        bound / MIB
    );
    assert!(peak < bound, "peak {} MiB", peak / MIB);
}
