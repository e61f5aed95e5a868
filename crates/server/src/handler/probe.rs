//! `StoreProbe`: how fast this server's own chunk store writes and reads, measured through
//! the store it serves data from (fault injection included), with no network in the way.
//! A benchmark takes it as the storage limit of the server.
//!
//! The probe writes `bytes` in `block`-sized writes, a few in flight at once as client
//! writes would be, to the scratch file [`MetadataTable::scratch_file_id`], an inode
//! number this server never hands out; syncs the store, so the write time counts the
//! device and not only the page cache; reads everything back, checking each block's
//! stamp; and removes the scratch file, whatever happened. One probe runs at a time.
//!
//! [`MetadataTable::scratch_file_id`]: crate::metadata::MetadataTable::scratch_file_id

use std::cell::Cell;
use std::time::Instant;

use benchfs_proto::limits::STORE_PROBE_BYTES_MAX;
use benchfs_proto::ops as op;
use benchfs_proto::Status;
use benchfs_store::{ChunkBuf, ChunkId, ChunkStore};
use futures_util::stream::{FuturesUnordered, StreamExt};

use super::{store_status, Reply, ServerState};

/// Most block I/Os a probe keeps in flight: enough for io_uring to keep a device busy,
/// as concurrent client writes would.
const PROBE_DEPTH_MAX: u64 = 16;
/// Most bytes of buffers a probe holds at once, which bounds the depth for large blocks.
const PROBE_INFLIGHT_BYTES_MAX: u64 = 64 << 20;
/// A probe lets other tasks run after this many bytes: the memory and file stores never
/// wait, so without it a large probe would hold the event loop from every other client.
const PROBE_YIELD_BYTES: u64 = 16 << 20;

/// Which half of a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    Write,
    Read,
}

/// Clears the running flag when the probe ends, however it ends.
struct Running<'a>(&'a Cell<bool>);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

impl ServerState {
    /// Answers a `StoreProbe`.
    pub(super) async fn store_probe(&self, req: op::StoreProbeRequest) -> Result<Reply, Status> {
        let chunk_size = self.store.chunk_size();
        if req.bytes == 0 || req.bytes > STORE_PROBE_BYTES_MAX {
            tracing::warn!(
                bytes = req.bytes,
                max = STORE_PROBE_BYTES_MAX,
                "store probe refused: bytes"
            );
            return Err(Status::InvalidArgument);
        }
        if req.block == 0 || u64::from(req.block) > chunk_size {
            tracing::warn!(block = req.block, chunk_size, "store probe refused: block");
            return Err(Status::InvalidArgument);
        }
        if self.probe_running.replace(true) {
            return Err(Status::Busy);
        }
        let _running = Running(&self.probe_running);
        let file_id = self.metadata.borrow().scratch_file_id();
        // A probe cut short (a killed server) may have left its scratch file.
        self.store
            .remove_file(file_id)
            .await
            .map_err(store_status)?;
        self.check_room(req.bytes)?;
        let measured = self.probe_passes(file_id, req).await;
        let removed = self.store.remove_file(file_id).await;
        let (write_ns, read_ns) = measured?;
        removed.map_err(store_status)?;
        tracing::debug!(
            bytes = req.bytes,
            block = req.block,
            write_ns,
            read_ns,
            "store probe"
        );
        Ok(Reply::ok(&op::StoreProbeReply {
            bytes: req.bytes,
            write_ns,
            read_ns,
        }))
    }

    /// Removes what a store probe cut short left behind (at start-up: a killed server).
    pub async fn remove_probe_leftovers(&self) {
        let file_id = self.metadata.borrow().scratch_file_id();
        match self.store.remove_file(file_id).await {
            Ok(0) => {}
            Ok(chunks) => tracing::info!(chunks, "removed a store probe's leftover scratch chunks"),
            Err(e) => tracing::warn!(error = %e, "removing a store probe's leftovers failed"),
        }
    }

    /// `NoSpace` when `bytes` more would take the store past its capacity.
    fn check_room(&self, bytes: u64) -> Result<(), Status> {
        let usage = self.store.usage();
        let Some(capacity) = usage.capacity_bytes else {
            return Ok(());
        };
        let available = capacity.saturating_sub(usage.used_bytes);
        if bytes > available {
            tracing::warn!(
                bytes,
                available,
                capacity,
                "store probe refused: the store has no room for it (storage.capacity)"
            );
            return Err(Status::NoSpace);
        }
        Ok(())
    }

    /// The write pass with its sync, then the read pass; their times in ns.
    async fn probe_passes(
        &self,
        file_id: u64,
        req: op::StoreProbeRequest,
    ) -> Result<(u64, u64), Status> {
        let started = Instant::now();
        self.probe_pass(file_id, req, Pass::Write).await?;
        self.store.sync().await.map_err(store_status)?;
        let write_ns = elapsed_ns(started);
        let started = Instant::now();
        self.probe_pass(file_id, req, Pass::Read).await?;
        Ok((write_ns, elapsed_ns(started)))
    }

    /// Writes or reads the whole scratch file in blocks, a bounded number in flight.
    async fn probe_pass(
        &self,
        file_id: u64,
        req: op::StoreProbeRequest,
        pass: Pass,
    ) -> Result<(), Status> {
        let block = u64::from(req.block);
        let depth = (PROBE_INFLIGHT_BYTES_MAX / block).clamp(1, PROBE_DEPTH_MAX) as usize;
        let chunk_size = self.store.chunk_size();
        let mut pending = FuturesUnordered::new();
        let (mut at, mut since_yield) = (0u64, 0u64);
        loop {
            while at < req.bytes && pending.len() < depth {
                // A block never crosses a chunk's end.
                let len = block.min(chunk_size - at % chunk_size).min(req.bytes - at);
                pending.push(self.probe_block(file_id, at, len, pass));
                at += len;
                since_yield += len;
            }
            match pending.next().await {
                Some(done) => done?,
                None => return Ok(()),
            }
            if since_yield >= PROBE_YIELD_BYTES {
                since_yield = 0;
                benchfs_ucx::yield_turn().await;
            }
        }
    }

    /// Writes or reads the `len` bytes at byte `at` of the scratch file.
    async fn probe_block(&self, file_id: u64, at: u64, len: u64, pass: Pass) -> Result<(), Status> {
        let chunk_size = self.store.chunk_size();
        let id = ChunkId {
            file_id,
            index: at / chunk_size,
        };
        let offset = at % chunk_size;
        // `len` is at most a chunk, which fits in memory.
        let mut buf = self
            .store
            .buffer(len as usize)
            .await
            .map_err(store_status)?;
        if pass == Pass::Write {
            stamp(&mut buf, at);
            return self
                .store
                .write(id, offset, buf)
                .await
                .0
                .map_err(store_status);
        }
        let (read, buf) = self.store.read(id, offset, buf).await;
        let n = read.map_err(store_status)?;
        if n as u64 != len || !stamped(&buf, at) {
            tracing::error!(
                at,
                len,
                n,
                "store probe: a block read back is not what was written"
            );
            return Err(Status::Io);
        }
        Ok(())
    }
}

/// Marks a block with its position (its first bytes), so the read pass can tell a block
/// from another. The rest is left as the buffer was: filling it would add a copy that
/// client writes do not make.
fn stamp(buf: &mut ChunkBuf, at: u64) {
    let bytes = at.to_le_bytes();
    let slice = buf.as_mut_slice();
    let n = slice.len().min(bytes.len());
    slice[..n].copy_from_slice(&bytes[..n]);
}

/// Whether a block read back carries the stamp of position `at`.
fn stamped(buf: &ChunkBuf, at: u64) -> bool {
    let bytes = at.to_le_bytes();
    let slice = buf.as_slice();
    let n = slice.len().min(bytes.len());
    slice[..n] == bytes[..n]
}

fn elapsed_ns(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX)
}
