//! The crate's error type: a failed UCX call, with the status UCX gave and its text.

use crate::sys;

/// A UCX status code (`ucs_status_t`).
///
/// UCX may return codes this crate does not name, so this is a newtype over the raw value
/// rather than a closed enum.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Status(i8);

impl Status {
    /// The operation was cancelled, for example by closing its endpoint.
    pub const CANCELED: Status = Status(sys::UCS_ERR_CANCELED);
    /// The peer closed or reset the connection.
    pub const CONNECTION_RESET: Status = Status(sys::UCS_ERR_CONNECTION_RESET);
    /// The peer stopped answering (keepalive or transport timeout).
    pub const ENDPOINT_TIMEOUT: Status = Status(sys::UCS_ERR_ENDPOINT_TIMEOUT);
    /// An argument was rejected before reaching the network.
    pub const INVALID_PARAM: Status = Status(sys::UCS_ERR_INVALID_PARAM);
    /// A receive buffer is smaller than the message.
    pub const MESSAGE_TRUNCATED: Status = Status(sys::UCS_ERR_MESSAGE_TRUNCATED);
    /// A bounded resource (a queue, a registration) is full.
    pub const EXCEEDS_LIMIT: Status = Status(sys::UCS_ERR_EXCEEDS_LIMIT);
    /// An offset or length is outside a memory region.
    pub const OUT_OF_RANGE: Status = Status(sys::UCS_ERR_OUT_OF_RANGE);
    /// The item already exists (for example an Active Message handler id).
    pub const ALREADY_EXISTS: Status = Status(sys::UCS_ERR_ALREADY_EXISTS);
    /// The peer cannot be reached.
    pub const UNREACHABLE: Status = Status(sys::UCS_ERR_UNREACHABLE);

    pub(crate) fn from_raw(raw: sys::ucs_status_t) -> Status {
        Status(raw)
    }

    /// The raw `ucs_status_t` value.
    pub fn code(self) -> i8 {
        self.0
    }

    /// UCX's description of this status.
    pub fn message(self) -> &'static str {
        sys::status_string(self.0)
    }

    /// Whether the status reports a broken connection to a peer (reset, timeout,
    /// unreachable, or a link or endpoint failure).
    pub fn is_peer_failure(self) -> bool {
        let code = self.0;
        code == sys::UCS_ERR_CONNECTION_RESET
            || code == sys::UCS_ERR_UNREACHABLE
            || code == sys::UCS_ERR_NOT_CONNECTED
            || code == sys::UCS_ERR_IO_ERROR
            || (sys::UCS_ERR_LAST_ENDPOINT_FAILURE..=sys::UCS_ERR_FIRST_LINK_FAILURE)
                .contains(&code)
    }
}

impl std::fmt::Debug for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Status({}: {})", self.0, self.message())
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message(), self.0)
    }
}

/// A UCX operation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{op}: {message} (status {})", status.code())]
pub struct UcxError {
    /// The UCX function (or the step of this crate) that failed, e.g. `"ucp_am_send_nbx"`.
    pub op: &'static str,
    /// The status UCX returned.
    pub status: Status,
    /// `ucs_status_string(status)`.
    pub message: &'static str,
}

impl UcxError {
    /// An error for `op` with a raw UCX status.
    pub(crate) fn new(op: &'static str, raw: sys::ucs_status_t) -> UcxError {
        Self::from_status(op, Status::from_raw(raw))
    }

    /// An error for `op` with a status.
    pub(crate) fn from_status(op: &'static str, status: Status) -> UcxError {
        UcxError {
            op,
            status,
            message: status.message(),
        }
    }
}

/// Turns a raw status into `Ok(())` for `UCS_OK` and an error otherwise.
pub(crate) fn check(op: &'static str, raw: sys::ucs_status_t) -> Result<(), UcxError> {
    if raw == sys::UCS_OK {
        Ok(())
    } else {
        Err(UcxError::new(op, raw))
    }
}

/// Why [`Worker::run_progress`](crate::Worker::run_progress) stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProgressError {
    /// A UCX call in the progress loop failed (getting the event fd, arming the worker).
    #[error(transparent)]
    Ucx(#[from] UcxError),
    /// Registering the worker's event fd with the tokio reactor failed.
    #[error("registering the UCX worker event fd with tokio: {0}")]
    Reactor(#[source] std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_the_operation_and_status() {
        let error = UcxError::from_status("ucp_get_nbx", Status::CANCELED);
        assert_eq!(
            error.to_string(),
            "ucp_get_nbx: Request canceled (status -16)"
        );
        assert!(!Status::CANCELED.is_peer_failure());
        assert!(Status::CONNECTION_RESET.is_peer_failure());
        assert!(Status::ENDPOINT_TIMEOUT.is_peer_failure());
        assert!(check("x", sys::UCS_OK).is_ok());
    }
}
