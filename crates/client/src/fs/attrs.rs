//! What a POSIX mount needs beyond files and directories: creating a record and getting
//! it back, owners, mode and times (`set_attr`), and symbolic links.

use benchfs_proto::meta::{EntryKind, FileMetadata, Owner};
use benchfs_proto::ops::{self, PATH_LEN_MAX};
use benchfs_proto::Status;

use super::data::WriteSource;
use super::{fs_err, names_dir, norm, rpc_err, FsClient};
use crate::error::ApiError;

impl FsClient {
    /// Sets the owner of the records this client creates from now on (by default the
    /// process's effective user and group; a mount sets each caller's).
    pub fn set_owner(&self, owner: Owner) {
        self.owner.set(owner);
    }

    /// Creates a file or directory at `path` and returns its record; `Exists` if the
    /// path has one already.
    pub async fn make(
        &self,
        path: &str,
        kind: EntryKind,
        mode: u32,
    ) -> Result<FileMetadata, ApiError> {
        let given = path;
        let path = norm(path)?;
        if names_dir(given) && kind != EntryKind::Directory {
            return Err(fs_err("create", &path, Status::IsDir));
        }
        if path == "/" || kind == EntryKind::Symlink {
            return Err(fs_err("create", &path, Status::InvalidArgument));
        }
        let meta = self
            .create_checked("create", &path, kind, mode)
            .await?
            .map_err(rpc_err("create", &path))?;
        self.meta_cache.borrow_mut().put(&path, meta);
        Ok(meta)
    }

    /// Changes the attributes `req.set` names (and the change time) on every replica of
    /// `req.path`'s record; `Stale` if the path now names another file than
    /// `req.file_id`. The root has no record and refuses with `PermissionDenied`. Setting
    /// a time first publishes the sizes this client's open handles of the path reached, as
    /// their close would after it, overwriting the time.
    pub async fn set_attr(&self, mut req: ops::SetAttrRequest) -> Result<FileMetadata, ApiError> {
        let given = std::mem::take(&mut req.path);
        req.path = norm(&given)?;
        if req.path == "/" {
            return Err(fs_err("setattr", &req.path, Status::PermissionDenied));
        }
        self.check_dir_form("setattr", &given, &req.path).await?;
        if req.set & (ops::set_attr::ATIME | ops::set_attr::MTIME) != 0 {
            // A size published at close sets the file's time to the close's: this client's
            // handles publish theirs first, so the times set now stay.
            self.flush_path(&req.path).await?;
        }
        self.forget(&req.path);
        let reply = self
            .change_record::<ops::SetAttr>(&req.path, req.file_id, &req)
            .await
            .map_err(rpc_err("setattr", &req.path))?;
        Ok(reply.meta)
    }

    /// Makes `path` a symbolic link to `target`. The target is written as the link's
    /// data, then its size published, so a reader never sees a partial target: a link
    /// whose size is still 0 is being made (see [`FsClient::readlink`]).
    pub async fn symlink(&self, target: &str, path: &str) -> Result<FileMetadata, ApiError> {
        let given = path;
        let path = norm(path)?;
        if names_dir(given) {
            return Err(fs_err("symlink", &path, Status::NotFound));
        }
        if target.is_empty() {
            return Err(fs_err("symlink", &path, Status::NotFound));
        }
        if target.len() > PATH_LEN_MAX {
            return Err(fs_err("symlink", &path, Status::NameTooLong));
        }
        let meta = self
            .create_checked("symlink", &path, EntryKind::Symlink, 0o777)
            .await?
            .map_err(rpc_err("symlink", &path))?;
        let written = async {
            self.write_spans(
                None,
                &path,
                meta,
                WriteSource::Copied(target.as_bytes()),
                (0, None),
            )
            .await?;
            self.grow_size(&path, meta.file_id, target.len() as u64)
                .await
        }
        .await;
        match written {
            Ok(meta) => Ok(meta),
            Err(e) => {
                if let Err(undo) = self.unlink(&path).await {
                    tracing::warn!(error = %undo, path, "could not remove a half-made symbolic link");
                }
                Err(e)
            }
        }
    }

    /// The target of the symbolic link `path`. `InvalidArgument` if it is not a link
    /// (as readlink(2)); `NotFound` while its target is still being written.
    pub async fn readlink(&self, path: &str) -> Result<String, ApiError> {
        let given = path;
        let path = norm(path)?;
        self.check_dir_form("readlink", given, &path).await?;
        let meta = self.lookup("readlink", &path, false).await?;
        if !meta.is_symlink() {
            return Err(fs_err("readlink", &path, Status::InvalidArgument));
        }
        if meta.size == 0 || meta.size > PATH_LEN_MAX as u64 {
            return Err(fs_err("readlink", &path, Status::NotFound));
        }
        let mut buf = vec![0; meta.size as usize];
        let n = self.read_at(&path, meta, meta.size, &mut buf, 0).await?;
        buf.truncate(n);
        String::from_utf8(buf).map_err(|_| fs_err("readlink", &path, Status::Io))
    }
}
