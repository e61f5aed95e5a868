//! The RPC client a server uses to call its peers (the orphan sweep, the duplicate check
//! at start-up): one call at a time, no payloads, no busy polling, the job secret.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use benchfs_rpc::{ClientOptions, RpcClient};
use benchfs_ucx::{Context, UcxError};

/// A client for calls to peers, named `name` in their logs.
pub(crate) fn peer_client(
    context: &Arc<Context>,
    secret: &[u8],
    rpc_timeout: Duration,
    name: String,
) -> Result<Rc<RpcClient>, UcxError> {
    let options = ClientOptions {
        rpc_timeout,
        rdma_threshold: usize::MAX,
        busy_poll: Duration::ZERO,
        inflight_max: 1,
        secret: secret.to_vec(),
        name,
    };
    RpcClient::start(context, options)
}
