//! Directory listing across servers: each server holds a share of every directory, so a
//! listing asks each one, page by page.

use benchfs_proto::meta::FileMetadata;
use benchfs_proto::ops::{self, READDIR_PAGE_MAX};

use super::FsClient;
use crate::rpc::{OutPayload, RpcError};
use benchfs_proto::placement::ServerIndex;

/// This server's entries of `dir`, in name order, at most `limit`.
pub(super) async fn list_server(
    client: &FsClient,
    server: ServerIndex,
    dir: &str,
    limit: usize,
) -> Result<Vec<(String, FileMetadata)>, RpcError> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let req = ops::ReaddirRequest {
            dir: dir.to_string(),
            after: after.take(),
            limit: READDIR_PAGE_MAX,
        };
        let (page, _) = client
            .call_on::<ops::Readdir>(server, &req, OutPayload::none())
            .await?;
        let last = page.entries.last().map(|(name, _)| name.clone());
        out.extend(page.entries);
        if page.done || out.len() >= limit || last.is_none() {
            return Ok(out);
        }
        after = last;
    }
}
