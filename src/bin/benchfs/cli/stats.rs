//! `benchfs stats`: what every server of a cluster has done since it started: its records,
//! chunks and space, its requests, errors and queue depth, and per operation the requests,
//! errors, payload bytes and latency. Tables by default, JSON with `--json`.

use std::path::PathBuf;

use super::cluster::Target;
use super::CliError;
use benchfs::blocking::BenchFS;
use benchfs::config::ServerConfig;
use benchfs::proto::ops::{OpStats, StatsReply};
use benchfs::registry::ServerEntry;
use serde_json::{json, Value};

/// `benchfs stats` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print JSON (one object with a `servers` array) instead of tables.
    #[arg(long)]
    pub json: bool,
    /// A configuration file naming the servers' registry, instead of a cluster
    /// directory (--dir) or a registry (--registry).
    #[arg(long, value_name = "FILE", conflicts_with = "registry")]
    pub config: Option<PathBuf>,
    /// Which cluster.
    #[command(flatten)]
    pub target: Target,
}

/// One server's answer, and the transports this client's connection to it uses.
type Answer = (ServerEntry, Result<StatsReply, String>, Vec<String>);

/// Runs `benchfs stats`. Fails, after printing what it has, when a server did not answer.
pub fn run(args: &Args) -> Result<(), CliError> {
    let fs = connect(args)?;
    let stats = fs.block_on(fs.client().server_stats());
    let mut transports = fs.block_on(fs.client().server_transports()).into_iter();
    let answers: Vec<Answer> = stats
        .into_iter()
        .map(|(entry, r)| {
            let lanes = transports
                .next()
                .and_then(|(_, t)| t.ok())
                .unwrap_or_default();
            (entry, r.map_err(|e| e.to_string()), lanes)
        })
        .collect();
    if args.json {
        let text = serde_json::to_string_pretty(&to_json(&answers))?;
        super::print_out(&(text + "\n"))?;
    } else {
        super::print_out(&(servers_table(&answers) + &ops_tables(&answers)))?;
    }
    let silent = answers.iter().filter(|(_, r, _)| r.is_err()).count();
    if silent > 0 {
        return Err(format!("{silent} of {} servers did not answer", answers.len()).into());
    }
    Ok(())
}

fn connect(args: &Args) -> Result<BenchFS, CliError> {
    match &args.config {
        Some(path) => args.target.connect_with(&ServerConfig::from_file(path)?),
        None => args.target.connect(),
    }
}

/// Requests of every operation that did not end `Ok`.
fn errors(s: &StatsReply) -> u64 {
    s.ops.iter().map(|o| o.errors).sum()
}

/// Bytes as decimal megabytes, as fio and IOR print them.
fn mb(bytes: u64) -> String {
    format!("{:.2}", bytes as f64 / 1e6)
}

fn us(ns: u64) -> String {
    format!("{:.1}", ns as f64 / 1e3)
}

/// One line per server.
fn servers_table(answers: &[Answer]) -> String {
    let mut out = format!(
        "{:<12} {:<22} {:>9} {:>8} {:>24} {:>10} {:>8} {:>11}\n",
        "server",
        "address",
        "records",
        "chunks",
        "used/capacity MB",
        "requests",
        "errors",
        "queue now/max"
    );
    for (entry, stats, _) in answers {
        let s = match stats {
            Ok(s) => s,
            Err(e) => {
                out += &format!(
                    "{:<12} {:<22} unreachable: {e}\n",
                    entry.node_id, entry.addr
                );
                continue;
            }
        };
        let capacity = match s.capacity_bytes {
            0 => "unbounded".to_string(),
            c => mb(c),
        };
        out += &format!(
            "{:<12} {:<22} {:>9} {:>8} {:>24} {:>10} {:>8} {:>11}\n",
            entry.node_id,
            entry.addr.to_string(),
            s.metadata_records,
            s.chunks,
            format!("{} / {capacity}", mb(s.used_bytes)),
            s.requests,
            errors(s),
            format!("{}/{}", s.queue_depth, s.queue_depth_max),
        );
    }
    out
}

/// Per server, a table of its operations.
fn ops_tables(answers: &[Answer]) -> String {
    let mut out = String::new();
    for (entry, stats, transports) in answers {
        let Ok(s) = stats else { continue };
        out += &format!(
            "\n{} ({}) over {}\n",
            entry.node_id,
            entry.addr,
            transports.join(", ")
        );
        out += &format!(
            "  {:<24} {:>10} {:>8} {:>10} {:>10} {:>10} {:>10}\n",
            "op", "requests", "errors", "MB in", "MB out", "p50 us", "p99 us"
        );
        for o in &s.ops {
            out += &format!(
                "  {:<24} {:>10} {:>8} {:>10} {:>10} {:>10} {:>10}\n",
                o.op.name(),
                o.requests,
                o.errors,
                mb(o.bytes_in),
                mb(o.bytes_out),
                us(o.latency_p50_ns),
                us(o.latency_p99_ns),
            );
        }
    }
    out
}

fn op_json(o: &OpStats) -> Value {
    json!({
        "op": o.op.name(),
        "requests": o.requests,
        "errors": o.errors,
        "bytes_in": o.bytes_in,
        "bytes_out": o.bytes_out,
        "latency_ns": {
            "p50": o.latency_p50_ns,
            "p90": o.latency_p90_ns,
            "p99": o.latency_p99_ns,
            "p999": o.latency_p999_ns,
            "max": o.latency_max_ns,
            "sum": o.latency_sum_ns,
        },
    })
}

/// The answers as JSON: exact integers (bytes, ns), where the tables round.
fn to_json(answers: &[Answer]) -> Value {
    let servers: Vec<Value> = answers
        .iter()
        .map(|(entry, stats, transports)| match stats {
            Ok(s) => json!({
                "server": entry.node_id,
                "address": entry.addr.to_string(),
                "records": s.metadata_records,
                "chunks": s.chunks,
                "used_bytes": s.used_bytes,
                "capacity_bytes": s.capacity_bytes,
                "room_bytes": s.room_bytes,
                "requests": s.requests,
                "errors": errors(s),
                "malformed": s.malformed,
                "orphan_chunks_removed": s.orphan_chunks_removed,
                "faults_injected": s.faults_injected,
                "queue_depth": s.queue_depth,
                "queue_depth_max": s.queue_depth_max,
                "transports": transports,
                "ops": s.ops.iter().map(op_json).collect::<Vec<_>>(),
            }),
            Err(e) => json!({
                "server": entry.node_id,
                "address": entry.addr.to_string(),
                "error": e,
            }),
        })
        .collect();
    json!({ "servers": servers })
}
