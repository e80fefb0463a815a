//! Errors and pastes a newcomer meets: each message names the fix, through real `cidboot`
//! processes.

mod common;

use common::*;

fn small_layout(work: &std::path::Path) -> (Image, String, std::path::PathBuf) {
    let img = image("amd64", &[vec![("etc/greeting", b"hi\n".to_vec())]]);
    let dir = work.join("layout");
    write_layout(&dir, &[("amd64", &img)]);
    let car = work.join("layout.car");
    let root = ipfs_car_pack(&dir, &car, false);
    (img, root, car)
}

#[test]
fn a_gateway_url_ending_in_ipfs_is_taken_as_its_base_url() {
    let work = tempfile::tempdir().unwrap();
    let (img, root, car) = small_layout(work.path());
    let gw = Gateway::start(&[car], work.path());
    let r = format!("ipfs://{root}");
    for pasted in [format!("{}/ipfs", gw.url), format!("{}/ipfs/", gw.url)] {
        let out = run(&[
            "inspect",
            &r,
            "--gateway",
            &pasted,
            "--ca",
            gw.ca.to_str().unwrap(),
            "--json",
        ]);
        assert!(
            out.ok,
            "inspect with --gateway {pasted} failed: {}",
            out.stderr
        );
        assert_eq!(out.json()["manifest_digest"], img.manifest.digest);
    }
}

#[test]
fn a_missing_executable_says_where_it_came_from_and_what_overrides_it() {
    use serde_json::json;
    for (config, workload, want) in [
        (
            json!({"Cmd": ["/bin/true"]}),
            None,
            "\"/bin/true\" not found in the image; it comes from the image's Cmd (it has no Entrypoint): set workload.entrypoint",
        ),
        (
            json!({"Entrypoint": ["/bin/true"], "Cmd": ["x"]}),
            None,
            "it comes from the image's Entrypoint: set workload.entrypoint",
        ),
        (
            json!({"Entrypoint": ["/bin/probe"]}),
            Some("[workload]\nentrypoint = [\"/bin/true\"]\n"),
            "it comes from workload.entrypoint in the configuration",
        ),
    ] {
        let r = run_image(&probe_image(config), workload, None, &[]);
        assert_eq!(r.code, Some(1), "{}", r.stderr);
        assert!(r.stderr.contains(want), "{want}: {}", r.stderr);
    }
}
