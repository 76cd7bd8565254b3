//! [`TimelyReducer`]: the exchange of shard sums between the processes of a run over
//! timely-dataflow's communication layer. Timely runs its worker on a thread of its own
//! (`timely:work-0`), which owns the channel and serves the training thread's exchanges: each
//! sends this process's node sums to every other process on timely's channel 0 and waits for
//! theirs.
//!
//! Failures: when a peer process dies or its connection drops, timely's receiving thread
//! for that peer panics ("timely communication error") and poisons the channel; the panic is
//! kept quiet, recorded with the peer's index (the thread is named `timely:recv-<peer>`),
//! and the exchange returns an error naming the peer. A peer that stays connected but does
//! not answer is given up after the exchange timeout. After a failure the connections are
//! left to the process's exit: closing them without timely's shutdown message is what makes
//! the other processes see the failure at once instead of waiting out their timeout.

use crate::ClusterError;
use crate::packet::Packet;
use plflow_ops::OpsError;
use plflow_ops::shard::{Layout, NodeSums, Reducer};
use std::net::TcpStream;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};
use timely_communication::allocator::zero_copy::initialize::initialize_networking_from_sockets;
use timely_communication::allocator::{AllocatorBuilder, ProcessBuilder};
use timely_communication::{Allocator, Hooks, Pull, Push, WorkerGuards, initialize_from};

/// Communication totals of one process, for the run's report.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ExchangeStats {
    /// Exchanges made.
    pub rounds: u64,
    /// Bytes this process sent (packets times receivers).
    pub bytes_sent: u64,
    /// Bytes it received.
    pub bytes_received: u64,
    /// Seconds spent in exchanges, waiting for the others included.
    pub seconds: f64,
}

/// The exchange of one process of a distributed run.
pub struct TimelyReducer {
    layout: Layout,
    requests: Option<Sender<NodeSums>>,
    replies: Receiver<Reply>,
    guards: Option<WorkerGuards<()>>,
    failed: bool,
    stats: ExchangeStats,
}

/// The timely worker's answer to one exchange: every process's sums, and the bytes moved.
struct Reply {
    sums: Result<NodeSums, OpsError>,
    sent: u64,
    received: u64,
}

impl std::fmt::Debug for TimelyReducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimelyReducer").field("layout", &self.layout).field("stats", &self.stats).finish()
    }
}

/// The last lost connection timely's threads reported: `(peer, message)`.
static LOST: Mutex<Option<(usize, String)>> = Mutex::new(None);

thread_local! {
    /// Set while this thread reads timely's channels, whose poisoning panics are expected.
    static IN_EXCHANGE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Keep timely's connection panics (and the poisoned reads they cause) off stderr, recording
/// which peer was lost; every other panic goes to the previous hook.
fn quiet_connection_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let name = std::thread::current().name().unwrap_or_default().to_owned();
            let peer = name.strip_prefix("timely:recv-").or(name.strip_prefix("timely:send-"));
            if let Some(peer) = peer.and_then(|p| p.parse::<usize>().ok()) {
                let payload = info.payload();
                let text = payload.downcast_ref::<String>().map(String::as_str);
                let message = text.or(payload.downcast_ref::<&str>().copied()).unwrap_or("connection failed");
                let message = message.to_owned();
                let mut lost = LOST.lock().unwrap_or_else(|p| p.into_inner());
                lost.get_or_insert((peer, message));
                return;
            }
            if IN_EXCHANGE.with(|e| e.get()) {
                return;
            }
            previous(info);
        }));
    });
}

impl TimelyReducer {
    /// Hand the connected `sockets` to timely and start its worker.
    pub fn new(
        layout: Layout,
        sockets: Vec<Option<TcpStream>>,
        timeout: Duration,
    ) -> Result<Self, ClusterError> {
        quiet_connection_panics();
        let failed =
            |detail: String| ClusterError::Connect { process: layout.worker, address: String::new(), detail };
        let hooks = Hooks::default();
        let local = ProcessBuilder::new_typed_vector(1, hooks.refill.clone(), hooks.spill.clone());
        let (builders, guard) = initialize_networking_from_sockets(local, sockets, layout.worker, 1, hooks)
            .map_err(|e| failed(format!("cannot start timely's networking: {e}")))?;
        let builders = builders.into_iter().map(AllocatorBuilder::Tcp).collect();
        let (requests, serve_requests) = channel::<NodeSums>();
        let (serve_replies, replies) = channel::<Reply>();
        // timely wants a `Sync` closure; the channel ends are taken out once by its one worker.
        let ends = Mutex::new(Some((serve_requests, serve_replies)));
        let guards = initialize_from(builders, Box::new(guard), move |allocator| {
            let taken = ends.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some((requests, replies)) = taken {
                serve(allocator, layout, timeout, requests, replies);
            }
        })
        .map_err(|e| failed(format!("cannot start timely's worker: {e}")))?;
        Ok(Self {
            layout,
            requests: Some(requests),
            replies,
            guards: Some(guards),
            failed: false,
            stats: ExchangeStats::default(),
        })
    }

    /// Communication totals so far.
    pub fn stats(&self) -> ExchangeStats {
        self.stats
    }

    /// Give the run up (this process failed elsewhere): the connections are left to the
    /// process's exit, so the other processes hear of it at once.
    pub fn abandon(&mut self) {
        self.failed = true;
    }
}

impl Reducer for TimelyReducer {
    fn layout(&self) -> Layout {
        self.layout
    }

    fn all_gather(&mut self, mine: NodeSums) -> Result<NodeSums, OpsError> {
        let stopped = || OpsError::Exchange {
            detail: "the exchange thread has stopped after an earlier failure".into(),
        };
        if self.failed {
            return Err(stopped());
        }
        let clock = Instant::now();
        let requests = self.requests.as_ref().ok_or_else(stopped)?;
        let reply = requests.send(mine).ok().and_then(|()| self.replies.recv().ok());
        let Some(reply) = reply else {
            self.failed = true;
            return Err(stopped());
        };
        self.failed = reply.sums.is_err();
        self.stats.rounds += 1;
        self.stats.bytes_sent += reply.sent;
        self.stats.bytes_received += reply.received;
        self.stats.seconds += clock.elapsed().as_secs_f64();
        reply.sums
    }
}

impl Drop for TimelyReducer {
    fn drop(&mut self) {
        // The worker returns when its requests end; after a clean run timely says goodbye to
        // every peer and joins its threads.
        drop(self.requests.take());
        let guards = self.guards.take();
        if self.failed || std::thread::panicking() {
            // Leave the connections to the process's exit (see the module documentation).
            std::mem::forget(guards);
            return;
        }
        IN_EXCHANGE.with(|e| e.set(true));
        let _ = catch_unwind(AssertUnwindSafe(move || drop(guards)));
        IN_EXCHANGE.with(|e| e.set(false));
    }
}

/// The timely worker: serve exchanges until the requests end or one fails.
fn serve(
    mut allocator: Allocator,
    layout: Layout,
    timeout: Duration,
    requests: Receiver<NodeSums>,
    replies: Sender<Reply>,
) {
    let (pushers, puller) = allocator.allocate::<Packet>(0);
    let mut channel = Channel { allocator, pushers, puller, layout, round: 0, early: Vec::new(), timeout };
    while let Ok(mine) = requests.recv() {
        let reply = channel.exchange(mine);
        let failed = reply.sums.is_err();
        if replies.send(reply).is_err() || failed {
            // Never say goodbye after a failure (see the module documentation).
            std::mem::forget(channel);
            return;
        }
    }
}

/// The worker's end of timely's channel 0.
struct Channel {
    allocator: Allocator,
    pushers: Vec<Box<dyn Push<Packet>>>,
    puller: Box<dyn Pull<Packet>>,
    layout: Layout,
    round: u64,
    /// Packets of later exchanges that arrived before this one finished.
    early: Vec<Packet>,
    timeout: Duration,
}

impl Channel {
    fn exchange(&mut self, mine: NodeSums) -> Reply {
        let mut reply = Reply { sums: Ok(Vec::new()), sent: 0, received: 0 };
        self.round += 1;
        let me = self.layout.worker;
        let mut waiting: Vec<usize> = (0..self.layout.workers).filter(|&w| w != me).collect();
        let packet = Packet { round: self.round, from: me, nodes: Ok(mine.clone()) };
        let size = Packet::wire_bytes(&mine) as u64;
        let pushers = &mut self.pushers;
        let sent = quietly(|| {
            for (w, pusher) in pushers.iter_mut().enumerate() {
                if w != me {
                    pusher.send(packet.clone());
                    pusher.done();
                }
            }
        });
        if sent.is_none() {
            reply.sums = Err(lost(&waiting));
            return reply;
        }
        reply.sent = size * waiting.len() as u64;
        let mut all = mine;
        let (now, later): (Vec<_>, Vec<_>) = self.early.drain(..).partition(|p| p.round == self.round);
        self.early = later;
        let deadline = Instant::now() + self.timeout;
        let mut arrived = now;
        loop {
            for packet in arrived.drain(..) {
                let from = packet.from;
                match packet.nodes {
                    Ok(nodes) => {
                        reply.received += Packet::wire_bytes(&nodes) as u64;
                        waiting.retain(|&w| w != from);
                        all.extend(nodes);
                    }
                    Err(e) => {
                        reply.sums = Err(OpsError::Exchange { detail: format!("process {from} sent {e}") });
                        return reply;
                    }
                }
            }
            if waiting.is_empty() {
                reply.sums = Ok(all);
                return reply;
            }
            if lost_peer().is_some() {
                reply.sums = Err(lost(&waiting));
                return reply;
            }
            if Instant::now() >= deadline {
                let wait = self.timeout.as_secs_f64();
                let detail =
                    format!("process(es) {waiting:?} sent nothing for {wait:.0} s; are they still running?");
                reply.sums = Err(OpsError::Exchange { detail });
                return reply;
            }
            self.allocator.await_events(Some(Duration::from_millis(20)));
            let (allocator, puller, round) = (&mut self.allocator, &mut self.puller, self.round);
            let Some(got) = quietly(|| {
                allocator.receive();
                let mut got = Vec::new();
                while let Some(packet) = puller.recv() {
                    got.push(packet);
                }
                allocator.release();
                got
            }) else {
                reply.sums = Err(lost(&waiting));
                return reply;
            };
            let (now, later): (Vec<_>, Vec<_>) = got.into_iter().partition(|p| p.round == round);
            self.early.extend(later);
            arrived = now;
        }
    }
}

/// Run `f`, turning the panic of a poisoned channel into `None` without printing it.
fn quietly<T>(f: impl FnOnce() -> T) -> Option<T> {
    IN_EXCHANGE.with(|e| e.set(true));
    let out = catch_unwind(AssertUnwindSafe(f)).ok();
    IN_EXCHANGE.with(|e| e.set(false));
    out
}

fn lost_peer() -> Option<(usize, String)> {
    LOST.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// The error of a lost connection, naming the peer timely's threads reported.
fn lost(waiting: &[usize]) -> OpsError {
    let detail = match lost_peer() {
        Some((peer, message)) => {
            format!("lost process {peer} ({message}); it has stopped or its network is down")
        }
        None => format!("lost the connection while waiting for process(es) {waiting:?}"),
    };
    OpsError::Exchange { detail }
}
