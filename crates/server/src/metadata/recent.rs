//! Which paths had a record come or go lately, or a call try to: the replica repair pass
//! leaves those alone, since a namespace call on them may still be on its way to another
//! replica.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use benchfs_proto::placement::PlacementKey;

/// Most changes remembered (about 40 bytes each, twice). Past it the oldest are
/// forgotten, and every path counts as unsettled until a whole window has passed.
pub const RECENT_CHANGES_MAX: usize = 1 << 18;

/// How long after a change a path counts as settled: twice the RPC timeout, by which
/// every call that could still change it has ended (and the registered servers the same
/// for as long before a repair round trusts its ring).
pub fn settle_window(rpc_timeout: Duration) -> Duration {
    rpc_timeout.saturating_mul(2)
}

/// Changes within the settle window, by path hash (a collision only makes a path wait).
#[derive(Debug)]
pub struct RecentChanges {
    window: Duration,
    latest: HashMap<u64, Instant>,
    order: VecDeque<(u64, Instant)>,
    /// Set when a change within the window had to be forgotten.
    unsettled_until: Option<Instant>,
}

impl RecentChanges {
    /// Nothing changed; a zero window counts every path as settled.
    pub fn new(window: Duration) -> Self {
        RecentChanges {
            window,
            latest: HashMap::new(),
            order: VecDeque::new(),
            unsettled_until: None,
        }
    }

    /// Sets how long a change keeps its path unsettled, and counts every path as changed
    /// now.
    pub fn set_window(&mut self, window: Duration) {
        self.window = window;
        self.unsettled_until = Some(Instant::now() + window);
    }

    /// Notes that a record came to or left `path` (normalised) now, or a call tried to.
    pub fn touch(&mut self, path: &str) {
        if self.window.is_zero() {
            return;
        }
        let now = Instant::now();
        self.forget_before(now);
        if self.order.len() >= RECENT_CHANGES_MAX {
            if let Some((hash, at)) = self.order.pop_front() {
                self.forget(hash, at);
            }
            self.unsettled_until = Some(now + self.window);
        }
        let hash = key_hash(path);
        self.latest.insert(hash, now);
        self.order.push_back((hash, now));
    }

    /// Whether no record came to or left `path` within the window.
    pub fn settled(&mut self, path: &str) -> bool {
        let now = Instant::now();
        self.forget_before(now);
        if self.unsettled_until.is_some_and(|until| now < until) {
            return false;
        }
        !self.latest.contains_key(&key_hash(path))
    }

    fn forget_before(&mut self, now: Instant) {
        while let Some(&(hash, at)) = self.order.front() {
            if now.duration_since(at) < self.window {
                break;
            }
            self.order.pop_front();
            self.forget(hash, at);
        }
    }

    fn forget(&mut self, hash: u64, at: Instant) {
        if self.latest.get(&hash) == Some(&at) {
            self.latest.remove(&hash);
        }
    }
}

fn key_hash(path: &str) -> u64 {
    PlacementKey::Metadata(path).hash()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_unsettles_its_path_for_the_window() {
        let mut recent = RecentChanges::new(Duration::from_millis(50));
        assert!(recent.settled("/a"));
        recent.touch("/a");
        assert!(!recent.settled("/a"));
        assert!(recent.settled("/b"));
        std::thread::sleep(Duration::from_millis(60));
        assert!(recent.settled("/a"));
        assert!(recent.order.is_empty() && recent.latest.is_empty());
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
    fn forgetting_a_change_early_unsettles_every_path() {
        let mut recent = RecentChanges::new(Duration::from_secs(60));
        for i in 0..=RECENT_CHANGES_MAX {
            recent.touch(&format!("/f{i}"));
        }
        assert_eq!(recent.order.len(), RECENT_CHANGES_MAX);
        assert!(!recent.settled("/never-touched"));
    }

    #[test]
    fn a_path_touched_twice_stays_unsettled_until_its_last_change_ages() {
        let mut recent = RecentChanges::new(Duration::from_millis(80));
        recent.touch("/a");
        std::thread::sleep(Duration::from_millis(50));
        recent.touch("/a");
        std::thread::sleep(Duration::from_millis(50));
        assert!(!recent.settled("/a"), "the second change is 50 ms old");
        std::thread::sleep(Duration::from_millis(40));
        assert!(recent.settled("/a"));
    }
}
