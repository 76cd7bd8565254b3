//! The host file of a distributed run: one `host:port` per line, line `i` being process `i`
//! (timely-dataflow's format). Blank lines and lines starting with `#` are skipped.

use crate::ClusterError;
use std::net::ToSocketAddrs;
use std::path::Path;

/// Longest host file read (a line per process).
const MAX_BYTES: u64 = 1 << 20;

/// The processes' addresses in `path`, checked to name a port each and to be distinct.
pub fn read(path: &Path) -> Result<Vec<String>, ClusterError> {
    let bad = |detail: String| ClusterError::Hosts { path: path.to_owned(), detail };
    let size = std::fs::metadata(path).map_err(|e| bad(format!("cannot read the host file: {e}")))?.len();
    if size > MAX_BYTES {
        return Err(bad(format!("{size} bytes: a host file has one `host:port` line per process")));
    }
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read the host file: {e}")))?;
    parse(&text).map_err(bad)
}

/// The addresses in a host file's text.
pub fn parse(text: &str) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let port = line.rsplit_once(':').map(|(_, p)| p.parse::<u16>());
        if !matches!(port, Some(Ok(_))) {
            return Err(format!("line {}: `{line}` is not `host:port`", i + 1));
        }
        if out.iter().any(|a| a == line) {
            return Err(format!("line {}: `{line}` is listed twice; each process needs its own port", i + 1));
        }
        out.push(line.to_owned());
    }
    if out.is_empty() {
        return Err("no `host:port` line: list one per process".into());
    }
    Ok(out)
}

/// `address` resolved, or an error saying it cannot be.
pub(crate) fn resolve(address: &str) -> Result<std::net::SocketAddr, String> {
    match address.to_socket_addrs() {
        Ok(mut addrs) => addrs.next().ok_or_else(|| "the name resolves to no address".to_owned()),
        Err(e) => Err(format!("cannot resolve the address: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_addresses_and_bad_ones_are_named() {
        let ok = parse("# run\n10.0.0.1:2101\n\n10.0.0.2:2101\n").expect("valid");
        assert_eq!(ok, ["10.0.0.1:2101", "10.0.0.2:2101"]);
        assert!(parse("localhost").expect_err("no port").contains("line 1"));
        assert!(parse("a:1\na:1").expect_err("twice").contains("twice"));
        assert!(parse("a:99999").is_err());
        assert!(parse("\n# nothing\n").is_err());
    }
}
