//! A loopback proxy in front of PostgreSQL that counts what its clients
//! send, by message type of the frontend protocol: `Execute` (one run of a
//! prepared statement), `Query` (one simple-protocol request: `BEGIN`,
//! `COMMIT`, a batch of `NOTIFY`s…) and `Parse` (a statement prepared).
//! Bytes are forwarded as they arrive, both ways; only their framing is
//! read. Every 100 ms the totals are written to `--report` as one JSON
//! line (replaced, not appended), e.g.
//! `{"execute": 120, "query": 40, "parse": 12, "statements": 160}`
//! where `statements` = execute + query.
//!
//!     pgcount --listen 127.0.0.1:15432 --upstream 127.0.0.1:5432 --report counts.json

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser)]
struct Args {
    /// Where clients connect (loopback).
    #[arg(long)]
    listen: String,
    /// The PostgreSQL server.
    #[arg(long, default_value = "127.0.0.1:5432")]
    upstream: String,
    /// The file the totals are written to.
    #[arg(long)]
    report: std::path::PathBuf,
}

#[derive(Default)]
struct Counts {
    execute: AtomicU64,
    query: AtomicU64,
    parse: AtomicU64,
}

impl Counts {
    fn json(&self) -> String {
        let (e, q, p) = (
            self.execute.load(Ordering::Relaxed),
            self.query.load(Ordering::Relaxed),
            self.parse.load(Ordering::Relaxed),
        );
        format!(
            "{{\"execute\": {e}, \"query\": {q}, \"parse\": {p}, \"statements\": {}}}\n",
            e + q
        )
    }
}

/// Startup-phase request codes sent without a type byte.
const SSL_REQUEST: u32 = 80_877_103;
const GSS_REQUEST: u32 = 80_877_104;

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// Longest message accepted from a client (a guard, not a protocol limit
/// that matters here: the benchmark's messages are small).
const MAX_MESSAGE: usize = 1 << 30;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let counts = Arc::new(Counts::default());
    {
        let counts = counts.clone();
        let report = args.report.clone();
        tokio::spawn(async move {
            loop {
                let tmp = report.with_extension("tmp");
                if std::fs::write(&tmp, counts.json()).is_ok() {
                    let _ = std::fs::rename(&tmp, &report);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }
    loop {
        let (client, _) = listener.accept().await?;
        let upstream = args.upstream.clone();
        let counts = counts.clone();
        tokio::spawn(async move {
            if let Err(e) = relay(client, &upstream, &counts).await {
                eprintln!("pgcount: a connection ended: {e}");
            }
        });
    }
}

async fn relay(client: TcpStream, upstream: &str, counts: &Counts) -> anyhow::Result<()> {
    client.set_nodelay(true)?;
    let server = TcpStream::connect(upstream).await?;
    server.set_nodelay(true)?;
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    let back = tokio::spawn(async move { tokio::io::copy(&mut from_server, &mut to_client).await });
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut started = false;
    // Off once the client is seen speaking TLS (the server accepted its
    // SSL request): then bytes are only forwarded.
    let mut counting = true;
    loop {
        let n = from_client.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        to_server.write_all(&chunk[..n]).await?;
        if !counting {
            continue;
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut at = 0;
        loop {
            let rest = &buf[at..];
            if !started {
                // Length-prefixed, no type byte: SSL/GSS requests (answered
                // with one byte), then the startup message.
                if rest.len() < 8 {
                    break;
                }
                let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                let code = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]);
                if rest[0] == TLS_HANDSHAKE || !(8..=MAX_MESSAGE).contains(&len) {
                    eprintln!(
                        "pgcount: a client speaks TLS; its statements are not counted (connect with sslmode=disable)"
                    );
                    counting = false;
                    buf.clear();
                    break;
                }
                if rest.len() < len {
                    break;
                }
                at += len;
                if code != SSL_REQUEST && code != GSS_REQUEST {
                    started = true;
                }
                continue;
            }
            if rest.len() < 5 {
                break;
            }
            let kind = rest[0];
            let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
            if !(4..=MAX_MESSAGE).contains(&len) {
                anyhow::bail!("not the PostgreSQL protocol (message length {len})");
            }
            if rest.len() < 1 + len {
                break;
            }
            match kind {
                b'E' => counts.execute.fetch_add(1, Ordering::Relaxed),
                b'Q' => counts.query.fetch_add(1, Ordering::Relaxed),
                b'P' => counts.parse.fetch_add(1, Ordering::Relaxed),
                _ => 0,
            };
            at += 1 + len;
        }
        if counting {
            buf.drain(..at);
        }
    }
    let _ = to_server.shutdown().await;
    let _ = back.await;
    Ok(())
}
