//! End-to-end tests: real benchfsd processes, real UCX, a real client.

mod common;

use benchfs::api::OpenFlags;
use common::{pattern, Cluster, ClusterSpec};

#[test]
fn write_close_open_read_round_trip() {
    let cluster = Cluster::start(ClusterSpec::default());
    let fs = cluster.client();
    let data = pattern(300_000, 1);
    let fd = fs.create("/f", 0o644).unwrap();
    assert_eq!(fs.write(fd, &data).unwrap(), data.len());
    fs.close(fd).unwrap();
    let fd = fs.open("/f", OpenFlags::READ, 0).unwrap();
    let mut buf = vec![0u8; data.len() + 10];
    assert_eq!(fs.read(fd, &mut buf).unwrap(), data.len());
    assert_eq!(&buf[..data.len()], &data[..]);
    fs.close(fd).unwrap();
    assert_eq!(fs.stat("/f").unwrap().size, data.len() as u64);
}
