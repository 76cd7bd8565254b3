//! The TCP connections of a distributed run, before timely takes them over: process `i`
//! listens on its own address, connects to every process below it and accepts every process
//! above it (timely's arrangement), all within the connect timeout. Each connection starts
//! with a hello both ways (process index, process count, job fingerprint), so that a process
//! of another run or another pipeline is refused with an error naming it, not met with
//! garbage later.

use crate::hosts::resolve;
use crate::{ClusterConfig, ClusterError};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

const MAGIC: u64 = u64::from_le_bytes(*b"plflow\x00\x01");
const HELLO: usize = 32;
/// Pause between attempts to reach a process that is not listening yet.
const RETRY: Duration = Duration::from_millis(200);

/// One connection per other process, in process order (`None` at this process's index).
pub fn sockets(cfg: &ClusterConfig) -> Result<Vec<Option<TcpStream>>, ClusterError> {
    let (me, n) = (cfg.process, cfg.addresses.len());
    let deadline = Instant::now() + cfg.connect_timeout;
    let fail = |process: usize, detail: String| ClusterError::Connect {
        process,
        address: cfg.addresses.get(process).cloned().unwrap_or_default(),
        detail,
    };
    if me >= n {
        return Err(fail(me, format!("--process {me} but the host file lists {n} processes (0..{n})")));
    }
    let listener = TcpListener::bind(&cfg.addresses[me])
        .map_err(|e| fail(me, format!("cannot listen on this process's address: {e}")))?;
    listener.set_nonblocking(true).map_err(|e| fail(me, format!("cannot poll the listener: {e}")))?;
    let mut out: Vec<Option<TcpStream>> = (0..n).map(|_| None).collect();
    for (i, slot) in out.iter_mut().enumerate().take(me) {
        let mut stream = reach(&cfg.addresses[i], deadline, cfg.connect_timeout).map_err(|e| fail(i, e))?;
        hello(&mut stream, cfg, me).map_err(|e| fail(i, format!("cannot greet it: {e}")))?;
        let from =
            read_hello(&mut stream, deadline).and_then(|h| validate(h, cfg)).map_err(|e| fail(i, e))?;
        if from != i {
            return Err(fail(i, format!("answered as process {from}: the host files differ")));
        }
        *slot = Some(stream);
    }
    while out[me + 1..].iter().any(Option::is_none) {
        match listener.accept() {
            Ok((mut stream, _)) => {
                stream.set_nonblocking(false).map_err(|e| fail(me, e.to_string()))?;
                let peer = read_hello(&mut stream, deadline).map_err(|e| fail(me, format!("a peer: {e}")))?;
                // Answer before judging, so that a peer of another job hears why too.
                hello(&mut stream, cfg, me).map_err(|e| fail(me, format!("cannot greet a peer: {e}")))?;
                let from = validate(peer, cfg).map_err(|e| fail(me, format!("a peer: {e}")))?;
                if from <= me || out[from].is_some() {
                    return Err(fail(from, format!("connected twice or out of turn (to process {me})")));
                }
                out[from] = Some(stream);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let missing = (me + 1..n).find(|&i| out[i].is_none()).unwrap_or(me);
                    let wait = cfg.connect_timeout.as_secs_f64();
                    return Err(fail(missing, format!("did not connect within {wait:.0} s; is it started?")));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(fail(me, format!("cannot accept connections: {e}"))),
        }
    }
    for stream in out.iter().flatten() {
        stream.set_read_timeout(None).map_err(|e| fail(me, e.to_string()))?;
        stream.set_nodelay(true).map_err(|e| fail(me, e.to_string()))?;
    }
    Ok(out)
}

/// A connection to `address`, retried until `deadline`.
fn reach(address: &str, deadline: Instant, timeout: Duration) -> Result<TcpStream, String> {
    let addr = resolve(address)?;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let error = match TcpStream::connect_timeout(&addr, left.clamp(Duration::from_millis(1), RETRY * 5)) {
            Ok(stream) => return Ok(stream),
            Err(e) => e,
        };
        if Instant::now() + RETRY >= deadline {
            let wait = timeout.as_secs_f64();
            return Err(format!(
                "did not answer within {wait:.0} s ({error}); is it started, and the address right?"
            ));
        }
        std::thread::sleep(RETRY);
    }
}

fn hello(stream: &mut TcpStream, cfg: &ClusterConfig, me: usize) -> std::io::Result<()> {
    let mut bytes = [0u8; HELLO];
    for (i, v) in [MAGIC, me as u64, cfg.addresses.len() as u64, cfg.job].into_iter().enumerate() {
        bytes[i * 8..(i + 1) * 8].copy_from_slice(&v.to_le_bytes());
    }
    stream.write_all(&bytes)
}

/// A peer's hello, read within the deadline.
fn read_hello(stream: &mut TcpStream, deadline: Instant) -> Result<[u64; 4], String> {
    let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(100));
    stream.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
    let mut bytes = [0u8; HELLO];
    stream
        .read_exact(&mut bytes)
        .map_err(|e| format!("no greeting ({e}); is it a plflow process of this run?"))?;
    Ok(std::array::from_fn(|i| u64::from_le_bytes(bytes[i * 8..(i + 1) * 8].try_into().expect("8 bytes"))))
}

/// Check a peer's hello belongs to this run; its process index.
fn validate([magic, from, processes, job]: [u64; 4], cfg: &ClusterConfig) -> Result<usize, String> {
    if magic != MAGIC {
        return Err("not a plflow process of this version (unknown greeting)".into());
    }
    if processes != cfg.addresses.len() as u64 || from >= processes {
        return Err(format!("its host file lists {processes} processes, this one's {}", cfg.addresses.len()));
    }
    if job != cfg.job {
        return Err(format!(
            "process {from} runs another job (pipeline, --set values or --shards differ): start every process \
             with the same command"
        ));
    }
    Ok(from as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a port")
    }

    fn config(process: usize, addresses: &[String], job: u64, wait: u64) -> ClusterConfig {
        ClusterConfig {
            process,
            addresses: addresses.to_vec(),
            shards: 12,
            connect_timeout: Duration::from_secs(wait),
            exchange_timeout: Duration::from_secs(wait),
            job,
        }
    }

    #[test]
    fn three_processes_connect_and_a_missing_one_is_named() {
        let addresses: Vec<String> = (0..3).map(|_| format!("127.0.0.1:{}", free_port())).collect();
        let addresses = &addresses;
        let got: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..3)
                .map(|p| {
                    s.spawn(move || sockets(&config(p, addresses, 7, 20)).map(|v| v.iter().flatten().count()))
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("thread")).collect()
        });
        assert!(got.iter().all(|r| matches!(r, Ok(2))), "{got:?}");

        // Process 1 of 2 with nobody at process 0's address.
        let lonely: Vec<String> = (0..2).map(|_| format!("127.0.0.1:{}", free_port())).collect();
        let err = sockets(&config(1, &lonely, 7, 1)).expect_err("nobody listens").to_string();
        assert!(err.starts_with("process 0 (127.0.0.1:"), "{err}");
        assert!(err.contains("did not answer within 1 s"), "{err}");
    }

    #[test]
    fn a_process_of_another_job_is_refused() {
        let addresses: Vec<String> = (0..2).map(|_| format!("127.0.0.1:{}", free_port())).collect();
        let got = std::thread::scope(|s| {
            let a = s.spawn(|| sockets(&config(0, &addresses, 1, 10)).map(|_| ()));
            let b = s.spawn(|| sockets(&config(1, &addresses, 2, 10)).map(|_| ()));
            [a.join().expect("thread"), b.join().expect("thread")]
        });
        for r in got {
            let err = r.expect_err("jobs differ").to_string();
            assert!(err.contains("runs another job"), "{err}");
        }
    }
}
