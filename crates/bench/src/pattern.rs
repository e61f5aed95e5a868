//! The data written when a run verifies: every byte is a function of the file, its offset
//! and the run's seed, so a reader can check any range without knowing who wrote it.

/// splitmix64: a cheap, well-mixed function of one word.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The 8 bytes of the pattern word at `offset / 8` of file `file_key`.
fn word(seed: u64, file_key: u64, index: u64) -> [u8; 8] {
    mix(seed ^ file_key.rotate_left(40) ^ index).to_le_bytes()
}

/// Fills `buf` with the pattern of bytes `offset..offset + buf.len()` of file `file_key`.
pub fn fill(buf: &mut [u8], seed: u64, file_key: u64, offset: u64) {
    let mut at = 0;
    while at < buf.len() {
        let abs = offset + at as u64;
        let within = (abs % 8) as usize;
        let bytes = word(seed, file_key, abs / 8);
        let n = (8 - within).min(buf.len() - at);
        buf[at..at + n].copy_from_slice(&bytes[within..within + n]);
        at += n;
    }
}

/// The index in `buf` of the first byte that is not the pattern of
/// `offset..offset + buf.len()` of file `file_key`, if any.
pub fn first_mismatch(buf: &[u8], seed: u64, file_key: u64, offset: u64) -> Option<usize> {
    let mut expected = vec![0u8; buf.len().min(1 << 20)];
    let mut at = 0;
    while at < buf.len() {
        let n = expected.len().min(buf.len() - at);
        fill(&mut expected[..n], seed, file_key, offset + at as u64);
        if let Some(i) = buf[at..at + n]
            .iter()
            .zip(&expected[..n])
            .position(|(a, b)| a != b)
        {
            return Some(at + i);
        }
        at += n;
    }
    None
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
