//! The bytes of one exchange: `round (u64) | sender (u64) | nodes (u64)`, then per node
//! `lo (u32) | hi (u32) | values (u64) | values as f64`, all little-endian. Peers are
//! processes of the same run (checked at connection), but a packet that does not parse is
//! still an error, not a panic.

use plflow_ops::shard::{Node, NodeSums};
use timely_bytes::arc::Bytes;
use timely_communication::Bytesable;

/// One process's sums for one exchange.
#[derive(Debug, Clone)]
pub struct Packet {
    /// The exchange's number (from 1), so early packets wait for their turn.
    pub round: u64,
    /// The sending process.
    pub from: usize,
    /// The sender's node sums; an error when the bytes did not parse.
    pub nodes: Result<NodeSums, String>,
}

impl Packet {
    /// Bytes on the wire for these sums.
    pub fn wire_bytes(nodes: &NodeSums) -> usize {
        24 + nodes.iter().map(|(_, v)| 16 + 8 * v.len()).sum::<usize>()
    }
}

impl Bytesable for Packet {
    fn from_bytes(bytes: Bytes) -> Self {
        let (round, from, nodes) = parse(&bytes);
        Packet { round, from, nodes }
    }

    fn length_in_bytes(&self) -> usize {
        self.nodes.as_ref().map_or(24, Packet::wire_bytes)
    }

    fn into_bytes<W: std::io::Write>(&self, writer: &mut W) {
        let empty = Vec::new();
        let nodes = self.nodes.as_ref().unwrap_or(&empty);
        let mut out = Vec::with_capacity(Packet::wire_bytes(nodes));
        for v in [self.round, self.from as u64, nodes.len() as u64] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for (node, values) in nodes {
            out.extend_from_slice(&node.lo.to_le_bytes());
            out.extend_from_slice(&node.hi.to_le_bytes());
            out.extend_from_slice(&(values.len() as u64).to_le_bytes());
            values.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        }
        // timely's writers are in-memory buffers sized by `length_in_bytes`.
        writer.write_all(&out).expect("timely's message buffer takes the packet");
    }
}

fn parse(bytes: &[u8]) -> (u64, usize, Result<NodeSums, String>) {
    let mut at = 0usize;
    let mut take = |n: usize| -> Option<&[u8]> {
        let s = bytes.get(at..at.checked_add(n)?)?;
        at += n;
        Some(s)
    };
    let mut u64_at = || take(8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    let (Some(round), Some(from), Some(count)) = (u64_at(), u64_at(), u64_at()) else {
        return (0, usize::MAX, Err(format!("a packet of {} bytes has no header", bytes.len())));
    };
    let mut nodes = Vec::new();
    let mut take = |n: usize| -> Option<&[u8]> {
        let s = bytes.get(at..at.checked_add(n)?)?;
        at += n;
        Some(s)
    };
    for _ in 0..count {
        let Some(head) = take(16) else { return (round, from as usize, Err("a node is cut short".into())) };
        let lo = u32::from_le_bytes(head[0..4].try_into().expect("4 bytes"));
        let hi = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes"));
        let len = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
        let Some(body) = usize::try_from(len).ok().and_then(|l| l.checked_mul(8)).and_then(&mut take) else {
            return (round, from as usize, Err(format!("node {lo}..{hi} claims {len} values past the end")));
        };
        let values =
            body.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
        nodes.push((Node { lo, hi }, values));
    }
    (round, from as usize, Ok(nodes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_round_trip_and_truncations_are_errors() {
        let nodes = vec![(Node { lo: 0, hi: 6 }, vec![1.5, -0.0, f64::MAX]), (Node { lo: 6, hi: 7 }, vec![])];
        let packet = Packet { round: 9, from: 2, nodes: Ok(nodes.clone()) };
        let mut bytes = Vec::new();
        packet.into_bytes(&mut bytes);
        assert_eq!(bytes.len(), packet.length_in_bytes());
        let (round, from, back) = parse(&bytes);
        assert_eq!((round, from), (9, 2));
        let back = back.expect("parses");
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].0, nodes[0].0);
        assert_eq!(
            back[0].1.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            nodes[0].1.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        for cut in [0, 10, 30, bytes.len() - 1] {
            assert!(parse(&bytes[..cut]).2.is_err(), "cut at {cut}");
        }
    }
}
