//! The round trip of an 8-byte Active Message through this binding alone, with no RPC
//! layer on top: a listener's endpoint, immediate sends, each side polling its worker
//! and nothing else. It is the floor under `benchfs rpc-bench`'s round trip, between
//! that and `ucx_perftest`'s (`scripts/rpc-vs-ucx-perftest.sh` prints all three).
//!
//! ```text
//! am_ping server PORT [--tcp]          answers until the client says stop
//! am_ping client PORT PINGS [--tcp]    prints: am_ping pings=N p50_us=X p99_us=Y
//! ```
//!
//! Both use the transports benchfs uses within a host (shared memory on), or `--tcp`.
#![allow(clippy::print_stdout, clippy::print_stderr)] // a command-line tool

use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::{Duration, Instant};

use benchfs_ucx::{AmProto, Context, Endpoint, Features, Listener, Role, UcxError, Worker};

const REQUEST: u16 = 1;
const REPLY: u16 = 2;
/// The one-byte header that ends the server.
const STOP: u8 = 0xff;
/// Pings before the timed ones.
const WARMUP: usize = 10_000;
/// How long either side waits for the other before it gives up.
const PEER_WAIT_MAX: Duration = Duration::from_secs(30);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let shared_memory = !args.iter().any(|a| a == "--tcp");
    let words: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| *a != "--tcp")
        .collect();
    let ran = match words.as_slice() {
        ["server", port] => port_of(port).and_then(|port| serve(port, shared_memory)),
        ["client", port, pings] => port_of(port).and_then(|port| {
            let pings = pings
                .parse()
                .map_err(|_| format!("bad ping count {pings:?}"))?;
            ping(port, pings, shared_memory)
        }),
        _ => Err("usage: am_ping server PORT [--tcp] | am_ping client PORT PINGS [--tcp]".into()),
    };
    if let Err(e) = ran {
        eprintln!("am_ping: {e}");
        std::process::exit(1);
    }
}

fn port_of(word: &str) -> Result<u16, String> {
    word.parse().map_err(|_| format!("bad port {word:?}"))
}

fn worker(shared_memory: bool, role: Role) -> Result<Rc<Worker>, String> {
    let config = benchfs_ucx::transport_config(shared_memory, role);
    let context = Context::with_config(Features::ALL, &config).map_err(|e| e.to_string())?;
    Worker::new(&context).map_err(|e| e.to_string())
}

fn serve(port: u16, shared_memory: bool) -> Result<(), String> {
    let worker = worker(shared_memory, Role::Server)?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let listener = Listener::bind(&worker, addr).map_err(|e| e.to_string())?;
    let requests = worker
        .set_am_handler(REQUEST, 1024)
        .map_err(|e| e.to_string())?;
    let _client = accept(&worker, &listener)?;
    let mut idle_since = Instant::now();
    loop {
        let Some(msg) = requests.try_recv_polling(64) else {
            if idle_since.elapsed() > PEER_WAIT_MAX {
                return Err("the client went silent".into());
            }
            continue;
        };
        idle_since = Instant::now();
        if msg.header() == [STOP] {
            return Ok(());
        }
        let reply = msg
            .reply_endpoint()
            .ok_or("a request without its endpoint")?;
        let ping = <[u8; 8]>::try_from(msg.header()).map_err(|_| "a ping of another size")?;
        // Sent at once (8 bytes): the request holds nothing that must be awaited.
        drop(reply.am_send(REPLY, ping, [0u8; 0], AmProto::Eager));
    }
}

fn accept(worker: &Rc<Worker>, listener: &Listener) -> Result<Endpoint, String> {
    let mut cx = TaskContext::from_waker(Waker::noop());
    let deadline = Instant::now() + PEER_WAIT_MAX;
    while Instant::now() < deadline {
        worker.progress();
        if let Poll::Ready(ep) = listener.poll_accept(&mut cx) {
            return ep.map_err(|e: UcxError| e.to_string());
        }
    }
    Err("no client connected".into())
}

fn ping(port: u16, pings: usize, shared_memory: bool) -> Result<(), String> {
    if pings == 0 {
        return Err("the ping count must be at least 1".into());
    }
    let worker = worker(shared_memory, Role::Client)?;
    let replies = worker
        .set_am_handler(REPLY, 1024)
        .map_err(|e| e.to_string())?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let ep = Endpoint::connect_socket(&worker, addr).map_err(|e| e.to_string())?;
    let mut rtt = Vec::with_capacity(pings);
    for i in 0..WARMUP + pings {
        let sent = Instant::now();
        drop(ep.am_send(REQUEST, i.to_le_bytes(), [0u8; 0], AmProto::Eager));
        while replies.try_recv_polling(1).is_none() {
            if let Some(e) = ep.failure() {
                return Err(format!("connection to {addr}: {e}"));
            }
            if sent.elapsed() > PEER_WAIT_MAX {
                return Err(format!("no reply to ping {i}"));
            }
        }
        if i >= WARMUP {
            rtt.push(sent.elapsed());
        }
    }
    drop(ep.am_send(REQUEST, [STOP], [0u8; 0], AmProto::Eager));
    // Long enough for the stop to leave before the endpoint closes.
    let flushed = Instant::now();
    while flushed.elapsed() < Duration::from_millis(50) {
        worker.progress();
    }
    rtt.sort_unstable();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "am_ping pings={pings} shared_memory={shared_memory} p50_us={:.3} p99_us={:.3}",
        us(rtt[pings / 2]),
        us(rtt[pings * 99 / 100])
    );
    Ok(())
}
