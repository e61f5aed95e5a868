//! The data written when a run verifies: every byte is a function of the file, its offset
//! and the run's seed, so a reader can check any range without knowing who wrote it.

/// How a workload's one-line shape says it verifies (see [`crate::phase::RankPhase::untimed`]).
pub const VERIFY_NOTE: &str = " verify (pattern work not timed)";

/// splitmix64: a cheap, well-mixed function of one word.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The 8 bytes of the pattern word at `index` (`offset / 8`) of the file whose key is
/// `base` ([`base`]).
fn word(base: u64, index: u64) -> [u8; 8] {
    mix(base ^ index).to_le_bytes()
}

/// The key of file `file_key`'s pattern under `seed`.
fn base(seed: u64, file_key: u64) -> u64 {
    seed ^ file_key.rotate_left(40)
}

/// Calls `each` with every piece of `offset..offset + len` that lies within one pattern
/// word, in order: the piece's range within `0..len` and the word's bytes it covers. Stops
/// at the first call that returns false and gives its start. Whole words go eight bytes
/// at a time, which keeps a check's pattern work well below the transfers it checks.
fn pieces(
    seed: u64,
    file_key: u64,
    offset: u64,
    len: usize,
    mut each: impl FnMut(std::ops::Range<usize>, &[u8]) -> bool,
) -> Option<usize> {
    let base = base(seed, file_key);
    let mut at = 0;
    while at < len {
        let abs = offset + at as u64;
        let within = (abs % 8) as usize;
        let n = (8 - within).min(len - at);
        let bytes = word(base, abs / 8);
        if !each(at..at + n, &bytes[within..within + n]) {
            return Some(at);
        }
        at += n;
    }
    None
}

/// Fills `buf` with the pattern of bytes `offset..offset + buf.len()` of file `file_key`.
pub fn fill(buf: &mut [u8], seed: u64, file_key: u64, offset: u64) {
    pieces(seed, file_key, offset, buf.len(), |range, bytes| {
        buf[range].copy_from_slice(bytes);
        true
    });
}

/// The index in `buf` of the first byte that is not the pattern of
/// `offset..offset + buf.len()` of file `file_key`, if any.
pub fn first_mismatch(buf: &[u8], seed: u64, file_key: u64, offset: u64) -> Option<usize> {
    let word_at = pieces(seed, file_key, offset, buf.len(), |range, bytes| {
        buf[range] == *bytes
    })?;
    let mut expected = [0u8; 8];
    let n = (8 - ((offset + word_at as u64) % 8) as usize).min(buf.len() - word_at);
    fill(&mut expected[..n], seed, file_key, offset + word_at as u64);
    let wrong = buf[word_at..word_at + n]
        .iter()
        .zip(&expected[..n])
        .position(|(a, b)| a != b)?;
    Some(word_at + wrong)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_range_matches_the_whole() {
        let mut whole = vec![0u8; 1000];
        fill(&mut whole, 7, 3, 0);
        let mut part = vec![0u8; 101];
        fill(&mut part, 7, 3, 333);
        assert_eq!(&whole[333..434], &part[..]);
        assert_eq!(first_mismatch(&whole[5..999], 7, 3, 5), None);
    }

    #[test]
    fn a_changed_byte_another_file_or_seed_is_caught() {
        let mut buf = vec![0u8; 4096];
        fill(&mut buf, 1, 2, 8192);
        buf[1234] ^= 1;
        assert_eq!(first_mismatch(&buf, 1, 2, 8192), Some(1234));
        buf[1234] ^= 1;
        assert_eq!(first_mismatch(&buf, 1, 3, 8192), Some(0));
        assert_eq!(first_mismatch(&buf, 9, 2, 8192), Some(0));
        assert_eq!(first_mismatch(&[0u8; 64], 1, 2, 0), Some(0));
    }
}
