//! Little-endian encoding helpers and the decode error every decoder returns.

/// Why bytes from the network could not be decoded. Never a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended before the message did.
    #[error("truncated: needed {needed} more bytes, {available} left")]
    Truncated {
        /// Bytes the decoder needed.
        needed: usize,
        /// Bytes that were left.
        available: usize,
    },
    /// Bytes were left over after the message.
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
    /// The magic number is not BenchFS's.
    #[error("bad magic {0:#010x}")]
    BadMagic(u32),
    /// The protocol version is not ours.
    #[error("protocol version {got} is not supported (this build speaks {ours})")]
    BadVersion {
        /// The version the peer sent.
        got: u16,
        /// The version this build speaks.
        ours: u16,
    },
    /// The operation id is unknown.
    #[error("unknown operation id {0}")]
    UnknownOp(u16),
    /// A field holds a value outside its range.
    #[error("field {field}: {reason}")]
    BadField {
        /// The field's name.
        field: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// A length field disagrees with the bytes that came.
    #[error("length mismatch in {field}: header says {declared}, got {actual}")]
    LengthMismatch {
        /// The length field's name.
        field: &'static str,
        /// The length the header declared.
        declared: u64,
        /// The length that arrived.
        actual: u64,
    },
}

/// Appends little-endian values to a buffer.
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// An empty writer.
    pub fn new() -> Self {
        Writer::default()
    }

    /// An empty writer with room for `capacity` bytes before it grows.
    pub fn with_capacity(capacity: usize) -> Self {
        Writer::from_vec(Vec::with_capacity(capacity))
    }

    /// A writer that appends to `buf`.
    pub fn from_vec(buf: Vec<u8>) -> Self {
        Writer { buf }
    }

    /// The bytes written.
    pub fn into_vec(self) -> Vec<u8> {
        self.buf
    }

    /// Appends one byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }
    /// Appends a little-endian u16.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Appends a little-endian u32.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Appends a little-endian u64.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Appends raw bytes.
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(v);
        self
    }

    /// Appends a fixed-size `#[repr(C)]` wire struct as it lies in memory.
    pub fn fixed<T: zerocopy::IntoBytes + zerocopy::Immutable>(&mut self, v: &T) -> &mut Self {
        self.bytes(v.as_bytes())
    }

    /// Appends a byte string with a u16 length prefix. Callers bound lengths first
    /// (paths and names are far below 64 KiB); longer input is a bug.
    pub fn str16(&mut self, v: &[u8]) -> &mut Self {
        let len = u16::try_from(v.len()).expect("string fields are bounded below 64 KiB");
        self.u16(len).bytes(v)
    }
}

/// Reads little-endian values from a byte slice, failing cleanly when it runs out.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Takes `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated {
                needed: n,
                available: self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// Reads a fixed-size `#[repr(C)]` wire struct.
    pub fn fixed<T>(&mut self) -> Result<T, DecodeError>
    where
        T: zerocopy::FromBytes + zerocopy::KnownLayout + zerocopy::Immutable,
    {
        let needed = std::mem::size_of::<T>();
        let available = self.remaining();
        let bytes = self.take(needed)?;
        T::read_from_bytes(bytes).map_err(|_| DecodeError::Truncated { needed, available })
    }

    /// Reads one byte.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }
    /// Reads a little-endian u16.
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    /// Reads a little-endian u32.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    /// Reads a little-endian u64.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    /// Reads a u16-length-prefixed byte string of at most `max` bytes.
    pub fn str16(&mut self, field: &'static str, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = usize::from(self.u16()?);
        if len > max {
            return Err(DecodeError::BadField {
                field,
                reason: "longer than its limit",
            });
        }
        self.take(len)
    }
    /// Reads a u16-length-prefixed UTF-8 string of at most `max` bytes.
    pub fn utf8(&mut self, field: &'static str, max: usize) -> Result<String, DecodeError> {
        let bytes = self.str16(field, max)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::BadField {
            field,
            reason: "not UTF-8",
        })
    }
    /// Fails unless every byte was read.
    pub fn finish(self) -> Result<(), DecodeError> {
        match self.buf.len() {
            0 => Ok(()),
            n => Err(DecodeError::Trailing(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let mut w = Writer::new();
        w.u8(1).u16(2).u32(3).u64(4).str16(b"abc");
        let bytes = w.into_vec();
        let mut r = Reader::new(&bytes);
        assert_eq!(r.u8().unwrap(), 1);
        assert_eq!(r.u16().unwrap(), 2);
        assert_eq!(r.u32().unwrap(), 3);
        assert_eq!(r.u64().unwrap(), 4);
        assert_eq!(r.utf8("s", 3).unwrap(), "abc");
        r.finish().unwrap();
        for cut in 0..bytes.len() {
            let mut r = Reader::new(&bytes[..cut]);
            let full = r
                .u8()
                .and_then(|_| r.u16())
                .and_then(|_| r.u32())
                .and_then(|_| r.u64())
                .and_then(|_| r.utf8("s", 3));
            assert!(full.is_err(), "cut at {cut} must fail");
        }
        let mut r = Reader::new(&bytes[15..]);
        assert!(matches!(r.str16("s", 2), Err(DecodeError::BadField { .. })));
    }
}
