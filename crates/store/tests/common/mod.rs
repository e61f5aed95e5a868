//! Shared test harness: a store on a fresh directory, driven on a current-thread runtime
//! inside a LocalSet, as the server runs it.

#![allow(dead_code)]

use std::future::Future;
use std::rc::Rc;

use benchfs_store::{AnyChunkStore, Backend, ChunkBuf, ChunkId, ChunkStore};
use benchfs_store::{StoreConfig, StoreError};
use tempfile::TempDir;

/// Chunk size for tests: small, so whole-chunk cases stay fast.
pub const CHUNK: u64 = 64 * 1024;
/// Queue depth for tests: small, so concurrency cases exceed it.
pub const QD: u32 = 4;
/// Memory tier of the tiered store in tests: four chunks, so most cases evict.
pub const MEMORY_TIER: u64 = 4 * CHUNK;

/// A store and the directory it lives in.
pub struct Harness {
    /// How the store was opened.
    pub config: StoreConfig,
    /// The store under test.
    pub store: Rc<AnyChunkStore>,
}

/// Reports a skipped case on stdout, where the test harness shows it.
#[allow(clippy::print_stdout)]
pub fn skip(what: &str, error: &StoreError) {
    println!("SKIPPED {what}: {error}");
}

impl Harness {
    /// Opens a store, or reports a skip if the kernel or file system lacks a feature.
    pub fn open(
        dir: &TempDir,
        backend: Backend,
        o_direct: bool,
        capacity_bytes: Option<u64>,
    ) -> Option<Harness> {
        let config = StoreConfig {
            backend,
            data_dir: dir.path().to_owned(),
            chunk_size: CHUNK,
            o_direct,
            capacity_bytes,
            queue_depth: QD,
            memory_tier_bytes: MEMORY_TIER,
            prefault_bytes: 0,
            huge_pages: false,
        };
        match AnyChunkStore::open(&config) {
            Ok(store) => Some(Harness {
                config,
                store: Rc::new(store),
            }),
            Err(e @ StoreError::Unsupported { .. }) => {
                skip(&format!("{backend} o_direct={o_direct}"), &e);
                None
            }
            Err(e) => panic!("open {backend}: {e}"),
        }
    }

    /// Drops the store and opens a new one on the same directory.
    pub fn reopen(&mut self) {
        assert_eq!(Rc::strong_count(&self.store), 1, "no other handle is alive");
        let fresh = AnyChunkStore::open(&self.config).expect("reopen");
        self.store = Rc::new(fresh);
    }
}

/// A fresh directory under `$BENCHFS_STORE_TEST_DIR`, else under `$TMPDIR` or /tmp.
/// O_DIRECT cases skip if that is tmpfs.
pub fn test_dir() -> TempDir {
    match std::env::var_os("BENCHFS_STORE_TEST_DIR") {
        Some(dir) => tempfile::tempdir_in(dir).unwrap(),
        None => tempfile::tempdir().unwrap(),
    }
}

/// Runs `case` on a current-thread runtime inside a LocalSet, on a store in a fresh
/// directory. This function owns the directory, so it outlives the case whatever fields
/// of the `Harness` the case's future captures.
pub fn run<F, Fut>(backend: Backend, o_direct: bool, capacity_bytes: Option<u64>, case: F)
where
    F: FnOnce(Harness) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = test_dir();
    run_in(&dir, backend, o_direct, capacity_bytes, case);
}

/// [`run`] on a store in `dir`.
pub fn run_in<F, Fut>(
    dir: &TempDir,
    backend: Backend,
    o_direct: bool,
    capacity_bytes: Option<u64>,
    case: F,
) where
    F: FnOnce(Harness) -> Fut,
    Fut: Future<Output = ()>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        if let Some(harness) = Harness::open(dir, backend, o_direct, capacity_bytes) {
            case(harness).await;
        }
    });
}

/// A tmpfs of a given size mounted on a fresh directory, unmounted when dropped.
pub struct SmallDisk {
    /// Where it is mounted.
    pub dir: TempDir,
}

impl SmallDisk {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it); `None`, with a skip
    /// reported, where that needs root this process lacks.
    pub fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            #[allow(clippy::print_stdout)]
            {
                println!("SKIPPED a {size} disk: mounting a tmpfs needs root");
            }
            return None;
        }
        Some(SmallDisk { dir })
    }

    /// Bytes free for an unprivileged writer now.
    pub fn free_bytes(&self) -> u64 {
        let path = std::ffi::CString::new(self.dir.path().as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: statvfs is plain integers, for which all zeros is a value.
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: a valid C string and a struct the call fills.
        assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut stat) }, 0);
        stat.f_bavail * stat.f_frsize
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

/// Deterministic bytes for `(seed, i)`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| (seed.wrapping_mul(31).wrapping_add(i * 7) % 251) as u8)
        .collect()
}

/// A store buffer holding `data`.
pub async fn buf_from(store: &impl ChunkStore, data: &[u8]) -> ChunkBuf {
    let mut buf = store.buffer(data.len()).await.unwrap();
    buf.as_mut_slice().copy_from_slice(data);
    buf
}

/// Writes `data`, panicking on error.
pub async fn write(store: &impl ChunkStore, id: ChunkId, offset: u64, data: &[u8]) {
    let buf = buf_from(store, data).await;
    let (result, back) = store.write(id, offset, buf).await;
    result.unwrap_or_else(|e| panic!("write {id} at {offset}+{}: {e}", data.len()));
    // Back whole, or empty when the store took its memory as the chunk's.
    assert!(
        back.len() == data.len() || back.capacity() == 0,
        "{} bytes of {} came back",
        back.len(),
        data.len()
    );
}

/// Reads up to `len` bytes, panicking on error.
pub async fn read(store: &impl ChunkStore, id: ChunkId, offset: u64, len: usize) -> Vec<u8> {
    let buf = store.buffer(len).await.unwrap();
    let (result, buf) = store.read(id, offset, buf).await;
    let n = result.unwrap_or_else(|e| panic!("read {id} at {offset}+{len}: {e}"));
    assert!(n <= len);
    buf[..n].to_vec()
}
