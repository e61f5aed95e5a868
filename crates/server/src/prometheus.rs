//! The Prometheus endpoint (`network.metrics_addr`): `GET /metrics` answered with the
//! server's counters in the Prometheus text exposition format (version 0.0.4), 404 for
//! any other path. It runs on the server's event loop, beside the RPC.
//!
//! We answer HTTP ourselves: one GET and one response per connection, about a hundred
//! lines, where an HTTP server crate would bring its whole dependency tree.
//!
//! **Invariant:** a scraper cannot stall or crash the server. Each connection is its own
//! task with a deadline for the whole exchange ([`CONNECTION_TIMEOUT`]), reads at most
//! [`REQUEST_HEAD_MAX`] bytes, and parses nothing but the request line; at most
//! [`CONNECTIONS_MAX`] are open at once (more wait in the kernel's backlog).

use std::fmt::Write as _;
use std::io::ErrorKind;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use benchfs_proto::ops::StatsReply;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::handler::ServerState;

/// Longest a connection may take to send its request and take the response.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// Most bytes of request line and headers read; a longer head is refused.
pub const REQUEST_HEAD_MAX: usize = 8 * 1024;
/// Most connections served at once.
pub const CONNECTIONS_MAX: usize = 8;

/// Serves scrapes on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, state: Rc<ServerState>) {
    let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a metrics connection failed");
                // A full descriptor table passes; do not spin on it meanwhile.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let state = Rc::clone(&state);
        tokio::task::spawn_local(async move {
            match tokio::time::timeout(CONNECTION_TIMEOUT, exchange(stream, &state)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "metrics connection failed"),
                Err(_) => tracing::debug!("metrics connection timed out; closed"),
            }
            drop(slot);
        });
    }
}

/// Reads one request head and writes its response; the stream closes when dropped.
async fn exchange(stream: TcpStream, state: &ServerState) -> std::io::Result<()> {
    let response = match read_head(&stream).await? {
        Some(head) => respond(&head, state),
        None => response(
            "413 Request Header Fields Too Large",
            "request head too long\n",
        ),
    };
    write_all(&stream, response.as_bytes()).await
}

/// The request head (up to the blank line, or what came before the peer closed); `None`
/// when it is longer than [`REQUEST_HEAD_MAX`].
async fn read_head(stream: &TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        stream.readable().await?;
        match stream.try_read(&mut buf) {
            Ok(0) => return Ok(Some(head)),
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            return Ok(Some(head));
        }
        if head.len() > REQUEST_HEAD_MAX {
            return Ok(None);
        }
    }
}

async fn write_all(stream: &TcpStream, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// What a request head asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// `GET /metrics`.
    Metrics,
    /// Another path.
    NotFound,
    /// Another method on `/metrics`.
    NotAllowed,
    /// Not an HTTP request line.
    BadRequest,
}

/// Reads the request line of a head; nothing else of it matters.
fn route(head: &[u8]) -> Route {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/") {
        return Route::BadRequest;
    }
    if target.split('?').next() != Some("/metrics") {
        return Route::NotFound;
    }
    if method != "GET" {
        return Route::NotAllowed;
    }
    Route::Metrics
}

/// The response to a request head.
fn respond(head: &[u8], state: &ServerState) -> String {
    match route(head) {
        Route::Metrics => response("200 OK", &exposition(state.node_id(), &state.stats())),
        Route::NotFound => response("404 Not Found", "not found; try /metrics\n"),
        Route::NotAllowed => response("405 Method Not Allowed", "only GET\n"),
        Route::BadRequest => response("400 Bad Request", "bad request line\n"),
    }
}

fn response(status: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Appends one metric family's `# HELP` and `# TYPE` lines.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Appends a family of one value with no labels.
fn single(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    family(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// The server's counters in the Prometheus text format. Node ids hold only
/// `[A-Za-z0-9._-]` (the config checks), so they need no escaping in a label.
pub fn exposition(node_id: &str, stats: &StatsReply) -> String {
    let mut out = String::new();
    family(&mut out, "benchfs_info", "gauge", "This server's node id.");
    let _ = writeln!(out, "benchfs_info{{node_id=\"{node_id}\"}} 1");
    per_op_counters(&mut out, stats);
    latency_summary(&mut out, stats);
    let gauges = [
        (
            "benchfs_queue_depth",
            "Requests being handled now.",
            stats.queue_depth,
        ),
        (
            "benchfs_queue_depth_max",
            "The most requests handled at once since start.",
            stats.queue_depth_max,
        ),
        (
            "benchfs_store_used_bytes",
            "Bytes the chunk store holds.",
            stats.used_bytes,
        ),
        (
            "benchfs_store_capacity_bytes",
            "The chunk store's capacity in bytes; 0 is unbounded.",
            stats.capacity_bytes,
        ),
        (
            "benchfs_store_room_bytes",
            "Bytes the chunk store could still take: the capacity left, or less where its memory or disk has less free.",
            stats.room_bytes,
        ),
        (
            "benchfs_store_chunks",
            "Chunks the store holds.",
            stats.chunks,
        ),
        (
            "benchfs_metadata_records",
            "Metadata records this server holds.",
            stats.metadata_records,
        ),
    ];
    for (name, help, value) in gauges {
        single(&mut out, name, "gauge", help, value);
    }
    let counters = [
        (
            "benchfs_malformed_total",
            "Requests refused as malformed.",
            stats.malformed,
        ),
        (
            "benchfs_orphan_chunks_removed_total",
            "Chunks of deleted files the orphan sweep removed.",
            stats.orphan_chunks_removed,
        ),
        (
            "benchfs_faults_injected_total",
            "Store faults injected (storage.inject_faults).",
            stats.faults_injected,
        ),
    ];
    for (name, help, value) in counters {
        single(&mut out, name, "counter", help, value);
    }
    out
}

/// The per-operation counters: requests, errors, bytes in and out.
fn per_op_counters(out: &mut String, stats: &StatsReply) {
    type Field = fn(&benchfs_proto::ops::OpStats) -> u64;
    let families: [(&str, &str, Field); 4] = [
        (
            "benchfs_requests_total",
            "Requests taken, by operation.",
            |s| s.requests,
        ),
        (
            "benchfs_errors_total",
            "Requests answered with an error or not answered, by operation.",
            |s| s.errors,
        ),
        (
            "benchfs_bytes_in_total",
            "File bytes received with requests (payloads, inline files' bytes), by operation.",
            |s| s.bytes_in,
        ),
        (
            "benchfs_bytes_out_total",
            "File bytes sent with replies (payloads, inline files' bytes), by operation.",
            |s| s.bytes_out,
        ),
    ];
    for (name, help, field) in families {
        family(out, name, "counter", help);
        for s in &stats.ops {
            let _ = writeln!(out, "{name}{{op=\"{}\"}} {}", s.op.name(), field(s));
        }
    }
}

/// Request latency as a summary (quantiles, sum, count) and its maximum as a gauge.
fn latency_summary(out: &mut String, stats: &StatsReply) {
    let seconds = |ns: u64| ns as f64 / 1e9;
    let name = "benchfs_request_duration_seconds";
    family(
        out,
        name,
        "summary",
        "Time from a request decoded to its reply sent, by operation.",
    );
    for s in &stats.ops {
        let op = s.op.name();
        let quantiles = [
            ("0.5", s.latency_p50_ns),
            ("0.9", s.latency_p90_ns),
            ("0.99", s.latency_p99_ns),
            ("0.999", s.latency_p999_ns),
        ];
        for (q, ns) in quantiles {
            let _ = writeln!(
                out,
                "{name}{{op=\"{op}\",quantile=\"{q}\"}} {}",
                seconds(ns)
            );
        }
        let _ = writeln!(
            out,
            "{name}_sum{{op=\"{op}\"}} {}",
            seconds(s.latency_sum_ns)
        );
        let _ = writeln!(out, "{name}_count{{op=\"{op}\"}} {}", s.requests);
    }
    let max = "benchfs_request_duration_max_seconds";
    family(
        out,
        max,
        "gauge",
        "The longest request since start, by operation.",
    );
    for s in &stats.ops {
        let _ = writeln!(
            out,
            "{max}{{op=\"{}\"}} {}",
            s.op.name(),
            seconds(s.latency_max_ns)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use benchfs_proto::ops::OpStats;
    use benchfs_proto::OpCode;

    #[test]
    fn exposition_lists_every_family_once_with_its_ops() {
        let ping = OpStats {
            op: OpCode::Ping,
            requests: 4,
            errors: 1,
            bytes_in: 10,
            bytes_out: 0,
            latency_p50_ns: 25_000,
            latency_p90_ns: 30_000,
            latency_p99_ns: 40_000,
            latency_p999_ns: 40_000,
            latency_max_ns: 41_000,
            latency_sum_ns: 120_000,
        };
        let stats = StatsReply {
            used_bytes: 5,
            queue_depth: 1,
            ops: vec![ping],
            ..Default::default()
        };
        let text = exposition("node0", &stats);
        for line in [
            "benchfs_info{node_id=\"node0\"} 1",
            "benchfs_requests_total{op=\"ping\"} 4",
            "benchfs_errors_total{op=\"ping\"} 1",
            "benchfs_bytes_in_total{op=\"ping\"} 10",
            "benchfs_request_duration_seconds{op=\"ping\",quantile=\"0.5\"} 0.000025",
            "benchfs_request_duration_seconds_sum{op=\"ping\"} 0.00012",
            "benchfs_request_duration_seconds_count{op=\"ping\"} 4",
            "benchfs_store_used_bytes 5",
            "benchfs_queue_depth 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing in:\n{text}"
            );
        }
        // Each family is declared once, and every sample belongs to a declared family.
        let types: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split(' ').next().unwrap())
            .collect();
        let mut unique = types.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), types.len());
        for sample in text.lines().filter(|l| !l.starts_with('#')) {
            let name = sample.split(['{', ' ']).next().unwrap();
            let base = ["_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            assert!(types.contains(&name) || types.contains(&base), "{sample}");
        }
    }

    #[test]
    fn request_lines() {
        let check = |line: &str, want: Route| {
            let head = format!("{line}\r\nHost: x\r\n\r\n");
            assert_eq!(route(head.as_bytes()), want, "{line:?}");
        };
        check("GET /metrics HTTP/1.1", Route::Metrics);
        check("GET /metrics?x=1 HTTP/1.0", Route::Metrics);
        check("GET / HTTP/1.1", Route::NotFound);
        check("GET /metricsx HTTP/1.1", Route::NotFound);
        check("POST /metrics HTTP/1.1", Route::NotAllowed);
        check("GET /metrics", Route::BadRequest);
        check("GET /metrics FTP/1", Route::BadRequest);
        check("GET /metrics HTTP/1.1 extra", Route::BadRequest);
        check("\u{0}\u{1}junk", Route::BadRequest);
        check("", Route::BadRequest);
        assert_eq!(route(&[0xff, 0xfe, b'\n']), Route::BadRequest);
    }
}
