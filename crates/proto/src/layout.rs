//! Chunk layout: how a byte range of a file maps onto fixed-size chunks.
//!
//! Chunk `i` holds file bytes `[i * chunk_size, (i + 1) * chunk_size)`. A chunk that was
//! never written is a hole and reads as zeros up to the file size; the last chunk of a
//! file may be shorter than `chunk_size`.

/// One piece of a file range that falls inside a single chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSpan {
    /// The chunk's index in the file.
    pub index: u64,
    /// Where the piece starts inside the chunk.
    pub offset_in_chunk: u64,
    /// The piece's length in bytes; never zero.
    pub len: u64,
    /// Where the piece starts in the caller's buffer (bytes from the range's start).
    pub buf_offset: u64,
}

/// A file range that does not fit in a 64-bit offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("range at offset {offset} of {len} bytes passes the largest file offset")]
pub struct RangeOverflow {
    /// The range's start.
    pub offset: u64,
    /// The range's length.
    pub len: u64,
}

/// The chunk geometry of a file system: one chunk size, a power of two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLayout {
    chunk_size: u64,
    shift: u32,
}

impl ChunkLayout {
    /// A layout with chunks of `chunk_size` bytes.
    ///
    /// # Panics
    /// If `chunk_size` is not a power of two; configurations are validated before this.
    pub fn new(chunk_size: u64) -> Self {
        assert!(
            chunk_size.is_power_of_two(),
            "chunk size {chunk_size} is not a power of two"
        );
        ChunkLayout {
            chunk_size,
            shift: chunk_size.trailing_zeros(),
        }
    }

    /// Bytes per chunk.
    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    /// The chunk holding file offset `offset`.
    pub fn chunk_index(&self, offset: u64) -> u64 {
        offset >> self.shift
    }

    /// The chunk holding file offset `offset`, and the offset in it.
    pub fn position(&self, offset: u64) -> (u64, u64) {
        (offset >> self.shift, offset & (self.chunk_size - 1))
    }

    /// Number of chunks a file of `file_size` bytes spans.
    pub fn chunk_count(&self, file_size: u64) -> u64 {
        file_size.div_ceil(self.chunk_size)
    }

    /// Length of chunk `index` in a file of `file_size` bytes (0 past the end).
    pub fn chunk_len(&self, file_size: u64, index: u64) -> u64 {
        let start = index.saturating_mul(self.chunk_size);
        file_size.saturating_sub(start).min(self.chunk_size)
    }

    /// Splits `len` bytes at `offset` into per-chunk spans, in file order.
    pub fn spans(&self, offset: u64, len: u64) -> Result<Spans, RangeOverflow> {
        let end = offset
            .checked_add(len)
            .ok_or(RangeOverflow { offset, len })?;
        Ok(Spans {
            layout: *self,
            pos: offset,
            start: offset,
            end,
        })
    }
}

/// Iterator over the [`ChunkSpan`]s of a range; see [`ChunkLayout::spans`].
#[derive(Debug, Clone)]
pub struct Spans {
    layout: ChunkLayout,
    pos: u64,
    start: u64,
    end: u64,
}

impl Iterator for Spans {
    type Item = ChunkSpan;

    fn next(&mut self) -> Option<ChunkSpan> {
        if self.pos >= self.end {
            return None;
        }
        let index = self.layout.chunk_index(self.pos);
        let offset_in_chunk = self.pos & (self.layout.chunk_size - 1);
        let len = (self.layout.chunk_size - offset_in_chunk).min(self.end - self.pos);
        let span = ChunkSpan {
            index,
            offset_in_chunk,
            len,
            buf_offset: self.pos - self.start,
        };
        self.pos += len;
        Some(span)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.pos >= self.end {
            return (0, Some(0));
        }
        let chunks = self.layout.chunk_index(self.end - 1) - self.layout.chunk_index(self.pos) + 1;
        let chunks = usize::try_from(chunks).unwrap_or(usize::MAX);
        (chunks, Some(chunks))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check(chunk: u64, offset: u64, len: u64, expected: &[(u64, u64, u64)]) {
        let got: Vec<_> = ChunkLayout::new(chunk)
            .spans(offset, len)
            .unwrap()
            .map(|s| (s.index, s.offset_in_chunk, s.len))
            .collect();
        assert_eq!(got, expected, "chunk {chunk} offset {offset} len {len}");
    }

    #[test]
    fn splits_ranges() {
        check(4096, 0, 0, &[]);
        check(4096, 0, 1, &[(0, 0, 1)]);
        check(4096, 0, 4096, &[(0, 0, 4096)]);
        check(4096, 4095, 2, &[(0, 4095, 1), (1, 0, 1)]);
        check(4096, 4096, 4096, &[(1, 0, 4096)]);
        check(
            4096,
            100,
            10000,
            &[(0, 100, 3996), (1, 0, 4096), (2, 0, 1908)],
        );
        check(1 << 22, (1 << 22) * 3 - 1, 1, &[(2, (1 << 22) - 1, 1)]);
        check(4096, u64::MAX - 1, 1, &[(u64::MAX >> 12, 4094, 1)]);
    }

    #[test]
    fn positions_split_an_offset_at_its_chunk() {
        let layout = ChunkLayout::new(4096);
        assert_eq!(layout.position(0), (0, 0));
        assert_eq!(layout.position(4095), (0, 4095));
        assert_eq!(layout.position(4096), (1, 0));
        assert_eq!(layout.position(u64::MAX), (u64::MAX >> 12, 4095));
    }

    #[test]
    fn overflow_is_an_error() {
        let layout = ChunkLayout::new(4096);
        assert_eq!(
            layout.spans(u64::MAX, 1).unwrap_err(),
            RangeOverflow {
                offset: u64::MAX,
                len: 1
            }
        );
        assert!(layout.spans(u64::MAX, 0).unwrap().next().is_none());
    }

    #[test]
    fn chunk_lengths() {
        let layout = ChunkLayout::new(4096);
        assert_eq!(layout.chunk_count(0), 0);
        assert_eq!(layout.chunk_count(1), 1);
        assert_eq!(layout.chunk_count(4096), 1);
        assert_eq!(layout.chunk_count(4097), 2);
        assert_eq!(layout.chunk_len(4097, 0), 4096);
        assert_eq!(layout.chunk_len(4097, 1), 1);
        assert_eq!(layout.chunk_len(4097, 2), 0);
        assert_eq!(layout.chunk_len(u64::MAX, u64::MAX >> 12), 4095);
        assert_eq!(layout.chunk_len(u64::MAX, u64::MAX), 0);
    }

    proptest! {
        #[test]
        fn spans_tile_the_range(shift in 12u32..27, offset in 0u64..(1 << 40), len in 0u64..(1 << 28)) {
            let layout = ChunkLayout::new(1 << shift);
            let spans: Vec<_> = layout.spans(offset, len).unwrap().collect();
            prop_assert_eq!(spans.len(), layout.spans(offset, len).unwrap().size_hint().0);
            let mut pos = offset;
            for (i, s) in spans.iter().enumerate() {
                prop_assert!(s.len > 0);
                prop_assert!(s.offset_in_chunk + s.len <= layout.chunk_size());
                prop_assert_eq!(s.index * layout.chunk_size() + s.offset_in_chunk, pos);
                prop_assert_eq!(s.buf_offset, pos - offset);
                if i > 0 {
                    prop_assert_eq!(s.index, spans[i - 1].index + 1);
                    prop_assert_eq!(s.offset_in_chunk, 0);
                }
                pos += s.len;
            }
            prop_assert_eq!(pos, offset + len);
        }
    }
}
