//! Data-parallel steps: every global batch is cut into a fixed number of shards, each worker
//! takes a contiguous run of them, and every sum over the batch (a Gram matrix, a right-hand
//! side, a gradient, a loss) is formed per shard and added in one fixed tree over the shard
//! indices. The tree does not depend on how many workers there are, so 1, 2 or 3 workers
//! add the same numbers in the same order and reach the same bits.
//!
//! A worker adds the shards it owns up to the largest whole subtrees inside its run (at most
//! two per level), sends those to the others through a [`Reducer`], and every worker then
//! completes the tree from what it holds. With the shards dividing evenly among the workers
//! each sends one vector per sum.

use crate::OpsError;
use std::collections::HashMap;
use std::ops::Range;

/// Shards of every global batch unless the run says otherwise: 12 divides evenly among 1,
/// 2, 3, 4, 6 and 12 workers.
pub const DEFAULT_SHARDS: usize = 12;

/// A node of the fixed summation tree: the sum over shards `lo..hi`. Its children split the
/// range at `(lo + hi) / 2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Node {
    /// First shard.
    pub lo: u32,
    /// One past the last shard.
    pub hi: u32,
}

impl Node {
    fn children(self) -> (Node, Node) {
        let mid = self.lo + (self.hi - self.lo) / 2;
        (Node { lo: self.lo, hi: mid }, Node { lo: mid, hi: self.hi })
    }

    fn is_leaf(self) -> bool {
        self.hi - self.lo == 1
    }
}

/// Which share of every global batch one worker takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Shards per global batch (fixed for a run: the results depend on it, not on `workers`).
    pub shards: usize,
    /// This worker's index.
    pub worker: usize,
    /// Workers in the run.
    pub workers: usize,
}

impl Layout {
    /// A checked layout: at least one shard per worker.
    pub fn new(shards: usize, worker: usize, workers: usize) -> Result<Self, OpsError> {
        if workers == 0 || worker >= workers || shards < workers || shards > u32::MAX as usize {
            let detail = format!(
                "worker {worker} of {workers} with {shards} shards per batch: there must be at least one \
                 shard per worker (raise --shards or use fewer workers)"
            );
            return Err(OpsError::Invalid { op: "shard layout", detail });
        }
        Ok(Self { shards, worker, workers })
    }

    /// The shards this worker owns.
    pub fn my_shards(&self) -> Range<usize> {
        self.worker * self.shards / self.workers..(self.worker + 1) * self.shards / self.workers
    }

    /// The samples of shard `s` in a global batch of `batch` samples.
    pub fn shard_samples(&self, s: usize, batch: usize) -> Range<usize> {
        s * batch / self.shards..(s + 1) * batch / self.shards
    }

    /// The samples of a global batch of `batch` this worker takes (its shards' samples).
    pub fn my_samples(&self, batch: usize) -> Range<usize> {
        let shards = self.my_shards();
        self.shard_samples(shards.start, batch).start..self.shard_samples(shards.end - 1, batch).end
    }

    /// The largest whole subtrees inside this worker's shards, in shard order.
    pub fn my_nodes(&self) -> Vec<Node> {
        let mine = self.my_shards();
        let mut out = Vec::new();
        cover(self.root(), mine.start as u32..mine.end as u32, &mut out);
        out
    }

    fn root(&self) -> Node {
        Node { lo: 0, hi: self.shards as u32 }
    }
}

fn cover(node: Node, mine: Range<u32>, out: &mut Vec<Node>) {
    if node.hi <= mine.start || mine.end <= node.lo {
        return;
    }
    if mine.start <= node.lo && node.hi <= mine.end {
        out.push(node);
        return;
    }
    let (a, b) = node.children();
    cover(a, mine.clone(), out);
    cover(b, mine, out);
}

/// `x` (`samples` samples of `rows` rows each) with its one sample repeated when it holds
/// exactly one, else `None`. A one-row product takes another kernel than a batched one
/// (a matrix-vector product, rounding differently), so a worker holding one sample would
/// compute other bits for it than a worker holding it among others; the copy is never
/// summed (no shard covers it).
pub fn two_rows_at_least(x: &crate::Matrix, samples: usize) -> Option<crate::Matrix> {
    if samples != 1 || x.rows() != 1 {
        return None;
    }
    let row = x.as_slice();
    Some(crate::Matrix::from_vec(2, x.cols(), [row, row].concat()))
}

/// Sums of tree nodes, as exchanged between workers.
pub type NodeSums = Vec<(Node, Vec<f64>)>;

/// Exchanges node sums between the workers of a run.
pub trait Reducer: std::fmt::Debug {
    /// This worker's share.
    fn layout(&self) -> Layout;

    /// Give this worker's node sums to every other worker and return every worker's
    /// (this one's included); an error names the worker that did not answer.
    fn all_gather(&mut self, mine: NodeSums) -> Result<NodeSums, OpsError>;
}

/// One process holding every shard: nothing to exchange.
#[derive(Debug, Clone, Copy)]
pub struct Local {
    /// Shards per global batch.
    pub shards: usize,
}

impl Reducer for Local {
    fn layout(&self) -> Layout {
        Layout { shards: self.shards.max(1), worker: 0, workers: 1 }
    }

    fn all_gather(&mut self, mine: NodeSums) -> Result<NodeSums, OpsError> {
        Ok(mine)
    }
}

/// The sum over every shard of a global batch of `batch` samples of the values
/// `partial(shard, samples)` returns (the same number for every shard), where `samples` are
/// the shard's samples counted from the first this worker holds. Every worker gets the same
/// bits, whatever their number.
pub fn shard_sum<E: From<OpsError>>(
    reducer: &mut dyn Reducer,
    batch: usize,
    partial: &mut dyn FnMut(usize, Range<usize>) -> Result<Vec<f64>, E>,
) -> Result<Vec<f64>, E> {
    let layout = reducer.layout();
    let first = layout.my_samples(batch).start;
    let mut leaf = |s: usize| -> Result<Vec<f64>, E> {
        let samples = layout.shard_samples(s, batch);
        partial(s, samples.start - first..samples.end - first)
    };
    let mut mine = Vec::new();
    for node in layout.my_nodes() {
        mine.push((node, subtree(node, &mut leaf)?));
    }
    let gathered = reducer.all_gather(mine)?;
    let mut held: HashMap<Node, Vec<f64>> = gathered.into_iter().collect();
    complete(layout.root(), &mut held).map_err(E::from)
}

/// [`shard_sum`] for a `partial` that may run on several shards at once: the two halves of
/// every node are computed in parallel (rayon), and added in the same order, so the bits are
/// those of [`shard_sum`]. At most a few partials per thread are alive at a time.
pub fn shard_sum_par<E: From<OpsError> + Send>(
    reducer: &mut dyn Reducer,
    batch: usize,
    partial: &(dyn Fn(usize, Range<usize>) -> Result<Vec<f64>, E> + Sync),
) -> Result<Vec<f64>, E> {
    let layout = reducer.layout();
    let first = layout.my_samples(batch).start;
    let leaf = |s: usize| -> Result<Vec<f64>, E> {
        let samples = layout.shard_samples(s, batch);
        partial(s, samples.start - first..samples.end - first)
    };
    let mut mine = Vec::new();
    for node in layout.my_nodes() {
        mine.push((node, subtree_par(node, &leaf)?));
    }
    let gathered = reducer.all_gather(mine)?;
    let mut held: HashMap<Node, Vec<f64>> = gathered.into_iter().collect();
    complete(layout.root(), &mut held).map_err(E::from)
}

fn subtree_par<E: From<OpsError> + Send>(
    node: Node,
    leaf: &(dyn Fn(usize) -> Result<Vec<f64>, E> + Sync),
) -> Result<Vec<f64>, E> {
    if node.is_leaf() {
        return leaf(node.lo as usize);
    }
    let (a, b) = node.children();
    let (left, right) = rayon::join(|| subtree_par(a, leaf), || subtree_par(b, leaf));
    Ok(add(node, left?, &right?)?)
}

/// The sum of a node whose leaves this worker computes, children added left to right.
fn subtree<E: From<OpsError>>(
    node: Node,
    leaf: &mut dyn FnMut(usize) -> Result<Vec<f64>, E>,
) -> Result<Vec<f64>, E> {
    if node.is_leaf() {
        return leaf(node.lo as usize);
    }
    let (a, b) = node.children();
    let left = subtree(a, leaf)?;
    Ok(add(node, left, &subtree(b, leaf)?)?)
}

/// The root's sum from the nodes held, completing missing nodes from their children.
fn complete(node: Node, held: &mut HashMap<Node, Vec<f64>>) -> Result<Vec<f64>, OpsError> {
    if let Some(v) = held.remove(&node) {
        return Ok(v);
    }
    if node.is_leaf() {
        let detail = format!("no worker sent the sum of shard {}", node.lo);
        return Err(OpsError::Exchange { detail });
    }
    let (a, b) = node.children();
    let left = complete(a, held)?;
    add(node, left, &complete(b, held)?)
}

/// `left + right` element by element; both halves of `node` must have as many values.
fn add(node: Node, mut left: Vec<f64>, right: &[f64]) -> Result<Vec<f64>, OpsError> {
    if left.len() != right.len() {
        let detail = format!(
            "the halves of shards {}..{} hold {} and {} values",
            node.lo,
            node.hi,
            left.len(),
            right.len()
        );
        return Err(OpsError::Exchange { detail });
    }
    left.iter_mut().zip(right).for_each(|(s, o)| *s += o);
    Ok(left)
}

/// Workers of one process that exchange through channels: for tests of the step's bits
/// across worker counts without starting processes.
pub mod threads {
    use super::*;
    use std::sync::mpsc::{Receiver, Sender, channel};

    /// One exchange's message: its round, its sender, the sender's sums.
    type Message = (u64, usize, NodeSums);

    /// How long a worker waits for the others before calling the exchange failed.
    const WAIT: std::time::Duration = std::time::Duration::from_secs(60);

    /// One worker's end of an in-process exchange.
    #[derive(Debug)]
    pub struct ChannelReducer {
        layout: Layout,
        to: Vec<Sender<Message>>,
        from: Receiver<Message>,
        round: u64,
        /// Messages of later rounds, received early.
        early: Vec<Message>,
    }

    /// `workers` connected reducers over `shards` shards, one per worker (give each to a thread).
    pub fn connected(shards: usize, workers: usize) -> Result<Vec<ChannelReducer>, OpsError> {
        let (to, from): (Vec<_>, Vec<_>) = (0..workers).map(|_| channel()).unzip();
        from.into_iter()
            .enumerate()
            .map(|(w, from)| {
                let layout = Layout::new(shards, w, workers)?;
                Ok(ChannelReducer { layout, to: to.clone(), from, round: 0, early: Vec::new() })
            })
            .collect()
    }

    impl Reducer for ChannelReducer {
        fn layout(&self) -> Layout {
            self.layout
        }

        fn all_gather(&mut self, mine: NodeSums) -> Result<NodeSums, OpsError> {
            self.round += 1;
            let me = self.layout.worker;
            for (w, to) in self.to.iter().enumerate() {
                if w != me {
                    let lost = |_| OpsError::Exchange { detail: format!("worker {w} has stopped") };
                    to.send((self.round, me, mine.clone())).map_err(lost)?;
                }
            }
            let mut all = mine;
            let mut heard = 1;
            let (now, later): (Vec<_>, Vec<_>) = self.early.drain(..).partition(|m| m.0 == self.round);
            self.early = later;
            for (_, _, sums) in now {
                all.extend(sums);
                heard += 1;
            }
            while heard < self.layout.workers {
                let lost =
                    |_| OpsError::Exchange { detail: format!("worker {me} heard from {heard} workers") };
                let message = self.from.recv_timeout(WAIT).map_err(lost)?;
                if message.0 == self.round {
                    all.extend(message.2);
                    heard += 1;
                } else {
                    self.early.push(message);
                }
            }
            Ok(all)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values whose sum depends on the order of addition.
    fn leaf_values(s: usize) -> Vec<f64> {
        (0..4)
            .map(|j| {
                ((s * 7919 + j * 104_729) % 1000) as f64 * 1e-3
                    + if s.is_multiple_of(3) { 1e16 } else { -3e15 }
            })
            .collect()
    }

    fn bits(v: &[f64]) -> Vec<u64> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// The sums every worker of a `workers`-worker run gets over `shards` shards.
    fn run(shards: usize, workers: usize, batch: usize) -> Vec<Vec<f64>> {
        let reducers = threads::connected(shards, workers).expect("layout");
        std::thread::scope(|scope| {
            let handles: Vec<_> = reducers
                .into_iter()
                .map(|mut r| {
                    scope.spawn(move || {
                        let first = r.layout().my_samples(batch).start;
                        let mut partial = |s: usize, local: Range<usize>| -> Result<Vec<f64>, OpsError> {
                            // The samples a shard sees are its own, wherever the worker starts.
                            assert_eq!(local.start + first, s * batch / shards);
                            Ok(leaf_values(s))
                        };
                        shard_sum(&mut r, batch, &mut partial).expect("sum")
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("worker")).collect()
        })
    }

    #[test]
    fn one_two_and_three_workers_give_the_same_bits() {
        for shards in [1, 5, 6, 12] {
            let one = run(shards, 1, 100);
            for workers in 2..=shards.min(4) {
                for sums in run(shards, workers, 100) {
                    assert_eq!(bits(&sums), bits(&one[0]), "{shards} shards, {workers} workers");
                }
            }
        }
    }

    #[test]
    fn the_parallel_sum_gives_the_sequential_bits() {
        for (shards, workers) in [(12, 1), (12, 3), (7, 2)] {
            let sequential = run(shards, workers, 100);
            let reducers = threads::connected(shards, workers).expect("layout");
            let parallel: Vec<Vec<f64>> = std::thread::scope(|scope| {
                let handles: Vec<_> = reducers
                    .into_iter()
                    .map(|mut r| {
                        scope.spawn(move || {
                            let partial = |s: usize, _: Range<usize>| -> Result<Vec<f64>, OpsError> {
                                Ok(leaf_values(s))
                            };
                            shard_sum_par(&mut r, 100, &partial).expect("sum")
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().expect("worker")).collect()
            });
            for (a, b) in parallel.iter().zip(&sequential) {
                assert_eq!(bits(a), bits(b), "{shards} shards, {workers} workers");
            }
        }
    }

    #[test]
    fn the_tree_is_the_documented_one() {
        // 6 shards: (s0 + (s1 + s2)) + (s3 + (s4 + s5)).
        let s: Vec<Vec<f64>> = (0..6).map(leaf_values).collect();
        let add = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x + y).collect::<Vec<_>>();
        let left = add(&s[0], &add(&s[1], &s[2]));
        let right = add(&s[3], &add(&s[4], &s[5]));
        assert_eq!(bits(&run(6, 1, 60)[0]), bits(&add(&left, &right)));
        // A different order really gives other bits here, so the test can fail.
        let serial = (1..6).fold(s[0].clone(), |acc, v| add(&acc, &s[v]));
        assert_ne!(bits(&serial), bits(&add(&left, &right)));
    }

    #[test]
    fn workers_cover_the_shards_and_samples_exactly_once() {
        for (shards, workers) in [(12, 5), (12, 12), (7, 3)] {
            let mut seen = vec![0; shards];
            let mut samples = 0;
            for w in 0..workers {
                let layout = Layout::new(shards, w, workers).expect("fits");
                for node in layout.my_nodes() {
                    (node.lo..node.hi).for_each(|s| seen[s as usize] += 1);
                }
                samples += layout.my_samples(50).len();
            }
            assert!(seen.iter().all(|&c| c == 1), "{shards} shards, {workers} workers: {seen:?}");
            assert_eq!(samples, 50);
        }
        assert!(Layout::new(2, 0, 3).is_err());
        assert!(Layout::new(2, 2, 2).is_err());
    }

    #[test]
    fn batches_smaller_than_the_shard_count_leave_empty_shards() {
        let layout = Layout::new(12, 2, 3).expect("fits");
        let total: usize = layout.my_shards().map(|s| layout.shard_samples(s, 5).len()).sum();
        assert_eq!(total, layout.my_samples(5).len());
        assert_eq!(run(12, 3, 5)[1].len(), 4);
    }
}
