//! Directory times: a create, a removal or a rename moves the modification and change times
//! of the directory the entry is in, as on Linux, so that what watches a directory's
//! time sees it change (Python's import cache lists a directory again only then).
//!
//! The directory's record lives on another server than the entry's, so telling it is one
//! more call, after the change. A burst of changes in one directory (mdtest's creates, a
//! job's checkpoint files) would send all of them to that one server, so a client tells
//! it at most once per [`TOUCH_INTERVAL`]: within a burst the directory keeps the time of
//! the burst's first change, as on a file system with coarse times. The root is not a
//! record, and keeps its time. A replica that did not answer lately (suspect) is not told:
//! each change in its directory would wait for it, and the change itself is done.

use std::time::{Duration, Instant};

use benchfs_proto::ops;
use benchfs_proto::path;
use benchfs_proto::placement::PlacementKey;
use futures_util::future::join_all;

use super::FsClient;
use crate::rpc::OutPayload;

/// How often a client tells a directory's owner at most that the directory changed.
const TOUCH_INTERVAL: Duration = Duration::from_millis(1);

/// How many directories a client remembers telling before it forgets those told longer
/// than [`TOUCH_INTERVAL`] ago.
const TOUCHED_DIRS_MAX: usize = 1024;

impl FsClient {
    /// Moves the times of the directories `paths` are in, after entries there changed.
    /// A failure is logged, not returned: the change itself happened.
    pub(super) async fn touch_parents(&self, paths: &[&str]) {
        let mut dirs: Vec<&str> = paths
            .iter()
            .filter_map(|p| path::split_parent(p).ok().map(|(dir, _)| dir))
            .filter(|&dir| dir != "/")
            .collect();
        dirs.dedup();
        let now = Instant::now();
        dirs.retain(|dir| self.due_for_touch(dir, now));
        let touches = dirs.iter().map(|&dir| async move {
            let req = ops::PathRequest {
                path: dir.to_string(),
            };
            let mut replicas = self.replica_set(PlacementKey::Metadata(dir));
            replicas.retain(|&s| !self.servers[s as usize].is_suspect(now));
            let answers = replicas
                .iter()
                .map(|&s| self.call_on::<ops::TouchDir>(s, &req, OutPayload::none()));
            for answer in join_all(answers).await {
                match answer {
                    Ok((reply, _)) => self.meta_cache.borrow_mut().put(dir, reply.meta),
                    Err(e) => tracing::debug!(error = %e, path = dir, "directory time not moved"),
                }
            }
        });
        join_all(touches).await;
    }

    /// Whether `dir`'s owner is due to be told of a change at `now`; if so, it counts as
    /// told.
    fn due_for_touch(&self, dir: &str, now: Instant) -> bool {
        let mut touched = self.dirs_touched.borrow_mut();
        if touched
            .get(dir)
            .is_some_and(|&at| now.duration_since(at) < TOUCH_INTERVAL)
        {
            return false;
        }
        if touched.len() >= TOUCHED_DIRS_MAX {
            touched.retain(|_, at| now.duration_since(*at) < TOUCH_INTERVAL);
        }
        touched.insert(dir.to_string(), now);
        true
    }
}
