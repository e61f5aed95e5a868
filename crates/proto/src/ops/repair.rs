//! Bodies of the replica comparison a server's repair pass sends to the other replicas
//! of the records it holds: for each path, the file the asker's record names; back, the
//! record the peer holds there (with a hash of its bytes if it is inline), whether the
//! peer deleted the asker's file, and whether the path has been left alone long enough to
//! be compared.

use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::{path_field, Rpc};
use crate::frame::OpCode;
use crate::meta::{FileMetadata, FileMetadataWire};
use crate::ops::Message;
use crate::wire::{DecodeError, Reader, Writer};

/// Most paths one `CompareRecords` request asks about (a reply of this many states fits
/// in a body; the asker also keeps the request's paths within one).
pub const COMPARE_RECORDS_MAX: usize = 256;

wire_header!(/// `CompareRequest` and `CompareReply`, before `count` entries.
    CountHeader = 4, { count: U32 });
wire_header!(/// One entry of a `CompareReply`, whole; `meta` and `data_hash` are zeros when
    /// `present` is 0.
    RecordStateWire = 82, { flags: u8, present: u8, meta: FileMetadataWire, data_hash: U64 });

const _: () = assert!(
    4 + COMPARE_RECORDS_MAX * std::mem::size_of::<RecordStateWire>()
        <= crate::frame::BODY_LEN_MAX as usize
);

const SETTLED: u8 = 1;
const DELETED: u8 = 2;

rpc!(/// Which records this server holds at the given paths, for a peer's repair pass.
    CompareRecords, CompareRecords, CompareRequest, CompareReply);

/// The paths a server holds records of, each with the inode number its record names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompareRequest {
    /// Normalised paths and the file each names on the asker.
    pub records: Vec<(String, u64)>,
}

/// What the asked server holds at each path of a [`CompareRequest`], in its order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompareReply {
    /// One state per asked path.
    pub states: Vec<RecordState>,
}

/// One path as the asked server sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordState {
    /// The record it holds there, if any.
    pub meta: Option<FileMetadata>,
    /// XXH3-64 of the record's bytes if it is inline and holds any, else 0.
    pub data_hash: u64,
    /// No record came to or left the path on this server for the settle time (twice the
    /// RPC timeout), so no call that could still change it is in flight.
    pub settled: bool,
    /// This server deleted the last record of the file the asker named (a tombstone).
    pub deleted: bool,
}

fn checked_count(r: &mut Reader<'_>) -> Result<usize, DecodeError> {
    let h: CountHeader = r.fixed()?;
    let count = h.count.get() as usize;
    if count > COMPARE_RECORDS_MAX {
        return Err(DecodeError::BadField {
            field: "count",
            reason: "more records than COMPARE_RECORDS_MAX",
        });
    }
    Ok(count)
}

impl Message for CompareRequest {
    fn encode(&self, w: &mut Writer) {
        w.fixed(&CountHeader {
            count: (self.records.len() as u32).into(),
        });
        for (path, file_id) in &self.records {
            w.u64(*file_id).str16(path.as_bytes());
        }
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let count = checked_count(r)?;
        let records = (0..count)
            .map(|_| {
                let file_id = r.u64()?;
                Ok((path_field(r, "path")?, file_id))
            })
            .collect::<Result<_, DecodeError>>()?;
        Ok(CompareRequest { records })
    }
}

impl Message for CompareReply {
    fn encode(&self, w: &mut Writer) {
        w.fixed(&CountHeader {
            count: (self.states.len() as u32).into(),
        });
        for state in &self.states {
            let mut flags = 0;
            if state.settled {
                flags |= SETTLED;
            }
            if state.deleted {
                flags |= DELETED;
            }
            w.fixed(&RecordStateWire {
                flags,
                present: u8::from(state.meta.is_some()),
                meta: state
                    .meta
                    .map_or_else(FileMetadataWire::new_zeroed, |m| m.to_wire()),
                data_hash: state.data_hash.into(),
            });
        }
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let count = checked_count(r)?;
        let states = (0..count)
            .map(|_| {
                let wire: RecordStateWire = r.fixed()?;
                if wire.flags & !(SETTLED | DELETED) != 0 {
                    return Err(DecodeError::BadField {
                        field: "flags",
                        reason: "unknown bits",
                    });
                }
                let meta = match super::bool_byte(wire.present, "present")? {
                    true => Some(FileMetadata::from_wire(&wire.meta)?),
                    false => None,
                };
                Ok(RecordState {
                    meta,
                    data_hash: wire.data_hash.get(),
                    settled: wire.flags & SETTLED != 0,
                    deleted: wire.flags & DELETED != 0,
                })
            })
            .collect::<Result<_, DecodeError>>()?;
        Ok(CompareReply { states })
    }
}
