//! The server's payload budget (`network.inflight_payload_bytes`): with a budget of one
//! transfer, writers and readers that keep many transfers in flight at once are admitted
//! in turn or, past the budget's wait, over it, every byte still lands where it was
//! written and reads back whole, and every transfer gives its bytes back (one alone then
//! always finds them free).

mod common;

use common::files::{read_file, write_file};
use common::{pattern, Cluster, ClusterSpec};

#[test]
fn transfers_past_the_budget_wait_or_go_over_it_and_every_byte_lands() {
    // One 64 KiB transfer at a time. The servers take it from the environment (this test
    // binary holds no other test that starts servers).
    std::env::set_var("BENCHFS_NETWORK_INFLIGHT_PAYLOAD_BYTES", "65536");
    let cluster = Cluster::start(ClusterSpec {
        servers: 2,
        ..ClusterSpec::default()
    });
    let files: Vec<(String, Vec<u8>)> = (0..4u64)
        .map(|i| (format!("/f{i}"), pattern(6 << 20, 40 + i)))
        .collect();
    std::thread::scope(|s| {
        for (path, data) in &files {
            let cluster = &cluster;
            s.spawn(move || write_file(&cluster.client(), path, data));
        }
    });
    std::thread::scope(|s| {
        for (path, data) in &files {
            let cluster = &cluster;
            s.spawn(move || {
                assert!(
                    read_file(&cluster.client(), path) == *data,
                    "{path} read back wrong"
                )
            });
        }
    });
    // The budget did bind: some transfer found it spent and went over it after the wait.
    let overruns = || -> usize {
        (0..cluster.spec.servers)
            .map(|i| std::fs::read_to_string(cluster.log_path(i)).unwrap_or_default())
            .map(|log| log.matches("payload budget exhausted").count())
            .sum()
    };
    let before = overruns();
    assert!(before > 0, "no transfer ever waited out the budget");
    // And every byte of it came back: one transfer at a time (no write-behind, one chunk
    // per call) always finds the budget free, so none goes over it.
    std::env::set_var("BENCHFS_CLIENT_WRITE_BEHIND_BYTES", "0");
    let fs = cluster.client();
    let chunk = cluster.spec.chunk_size as usize;
    let data = pattern(32 * chunk, 50);
    let fd = fs.create("/one_at_a_time", 0o644).unwrap();
    for (i, piece) in data.chunks(chunk).enumerate() {
        fs.pwrite(fd, piece, (i * chunk) as u64).unwrap();
    }
    fs.close(fd).unwrap();
    assert_eq!(
        overruns(),
        before,
        "a transfer alone found the budget spent"
    );
    assert!(read_file(&fs, "/one_at_a_time") == data);
}
