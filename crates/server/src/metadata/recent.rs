//! Which paths had a record come or go lately, or a call try to: the replica repair pass
//! leaves those alone, since a namespace call on them may still be on its way to another
//! replica.
//!
//! Every create, delete and move notes its path here, so a note must cost next to nothing:
//! a map of paths to times with an eviction queue took a tenth of a create's handling (two
//! random probes of a table of a quarter million entries). So the changes of the current
//! and of the last window are two bitmaps indexed by path hash (a Bloom filter with one
//! hash): a note sets one bit, and a false positive only makes a path wait one more window
//! for repair, as does a change older than the window that the bitmaps still hold.

use std::time::{Duration, Instant};

use benchfs_proto::placement::PlacementKey;

/// Bits of each of the two bitmaps (256 KiB each): at a steady 250,000 changes a window
/// about one unchanged path in five counts as changed (a bit of either bitmap); far more
/// changes than that make every path wait, as a repair pass should while the namespace is
/// that busy.
const BITMAP_BITS: usize = 1 << 21;

/// How long after a change a path counts as settled: twice the RPC timeout, by which
/// every call that could still change it has ended (and the registered servers the same
/// for as long before a repair round trusts its ring).
pub fn settle_window(rpc_timeout: Duration) -> Duration {
    rpc_timeout.saturating_mul(2)
}

/// Changes within the settle window, by path hash. A path changed within the window is
/// never settled; one whose last change is older is settled within three windows of it
/// (the bitmaps rotate only when a call comes), unless another path's hash shares its bit.
#[derive(Debug)]
pub struct RecentChanges {
    window: Duration,
    /// Changes since `current_since` (empty while the window is zero).
    current: Vec<u64>,
    /// Changes in the window before `current_since`.
    previous: Vec<u64>,
    current_since: Instant,
    /// Every path counts as changed until then.
    unsettled_until: Option<Instant>,
}

impl RecentChanges {
    /// Nothing changed; a zero window counts every path as settled.
    pub fn new(window: Duration) -> Self {
        let mut recent = RecentChanges {
            window: Duration::ZERO,
            current: Vec::new(),
            previous: Vec::new(),
            current_since: Instant::now(),
            unsettled_until: None,
        };
        recent.resize_for(window);
        recent
    }

    /// Sets how long a change keeps its path unsettled, and counts every path as changed
    /// now.
    pub fn set_window(&mut self, window: Duration) {
        self.resize_for(window);
        self.unsettled_until = Some(Instant::now() + window);
    }

    fn resize_for(&mut self, window: Duration) {
        self.window = window;
        let words = if window.is_zero() {
            0
        } else {
            BITMAP_BITS / 64
        };
        self.current = vec![0; words];
        self.previous = vec![0; words];
        self.current_since = Instant::now();
    }

    /// Notes that a record came to or left `path` (normalised) now, or a call tried to.
    pub fn touch(&mut self, path: &str) {
        if self.window.is_zero() {
            return;
        }
        self.rotate(Instant::now());
        let (word, bit) = bit_of(path);
        self.current[word] |= bit;
    }

    /// Whether no record came to or left `path` within the window.
    pub fn settled(&mut self, path: &str) -> bool {
        if self.window.is_zero() {
            return true;
        }
        let now = Instant::now();
        self.rotate(now);
        if self.unsettled_until.is_some_and(|until| now < until) {
            return false;
        }
        let (word, bit) = bit_of(path);
        (self.current[word] | self.previous[word]) & bit == 0
    }

    /// Starts a new current bitmap once the current one is a window old. Each call that
    /// notes a change rotates first, so a change lands in a bitmap less than a window old,
    /// and it is dropped only at the second rotation after it (a window later at least), or
    /// at the first when that comes two windows after the bitmap began.
    fn rotate(&mut self, now: Instant) {
        let age = now.saturating_duration_since(self.current_since);
        if age < self.window {
            return;
        }
        if age < self.window.saturating_mul(2) {
            std::mem::swap(&mut self.current, &mut self.previous);
        } else {
            self.previous.fill(0);
        }
        self.current.fill(0);
        self.current_since = now;
    }
}

/// The word and the bit within it of `path`'s hash.
fn bit_of(path: &str) -> (usize, u64) {
    let index = PlacementKey::Metadata(path).hash() as usize % BITMAP_BITS;
    (index / 64, 1 << (index % 64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_unsettles_its_path_for_the_window_and_no_more_than_two() {
        let window = Duration::from_millis(50);
        let mut recent = RecentChanges::new(window);
        assert!(recent.settled("/a"));
        recent.touch("/a");
        assert!(!recent.settled("/a"));
        assert!(recent.settled("/b"));
        std::thread::sleep(window * 2 + Duration::from_millis(10));
        assert!(recent.settled("/a"));
    }

    #[test]
    fn a_change_is_kept_for_a_whole_window_across_a_rotation() {
        let window = Duration::from_millis(100);
        let mut recent = RecentChanges::new(window);
        // The first bitmap is nearly a window old when /a lands in it; it rotates soon
        // after, and /a must stay unsettled for the rest of its window.
        std::thread::sleep(Duration::from_millis(90));
        recent.touch("/a");
        let noted = Instant::now();
        while noted.elapsed() < Duration::from_millis(90) {
            assert!(!recent.settled("/a"), "settled {:?} after", noted.elapsed());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn setting_the_window_unsettles_every_path_for_it() {
        let mut recent = RecentChanges::new(Duration::ZERO);
        recent.set_window(Duration::from_millis(40));
        assert!(!recent.settled("/never-touched"));
        std::thread::sleep(Duration::from_millis(50));
        assert!(recent.settled("/never-touched"));
    }

    #[test]
    fn a_zero_window_settles_everything() {
        let mut recent = RecentChanges::new(Duration::ZERO);
        recent.touch("/a");
        assert!(recent.settled("/a"));
    }

    #[test]
    fn many_changes_leave_almost_every_other_path_settled() {
        let mut recent = RecentChanges::new(Duration::from_secs(60));
        for i in 0..100_000 {
            recent.touch(&format!("/d/changed{i}"));
        }
        assert!((0..100_000).all(|i| !recent.settled(&format!("/d/changed{i}"))));
        let waiting = (0..10_000)
            .filter(|i| !recent.settled(&format!("/d/other{i}")))
            .count();
        // One bit in 21 is set: about 480 of 10,000 collide.
        assert!(waiting < 700, "{waiting} of 10000 unchanged paths wait");
    }

    #[test]
    fn a_path_touched_twice_stays_unsettled_until_its_last_change_ages() {
        let window = Duration::from_millis(80);
        let mut recent = RecentChanges::new(window);
        recent.touch("/a");
        std::thread::sleep(Duration::from_millis(50));
        recent.touch("/a");
        std::thread::sleep(Duration::from_millis(50));
        assert!(!recent.settled("/a"), "the second change is 50 ms old");
        std::thread::sleep(window * 2);
        assert!(recent.settled("/a"));
    }
}
