//! The ledger's site tracing names the source lines that hold the peak. Its own process (an
//! integration test binary with one test): tracing is process-wide.

use plflow_ops::Matrix;
use plflow_ops::ledger::{self, Buffer};

#[test]
fn the_peak_is_attributed_to_the_lines_that_allocated_it() {
    ledger::trace_sites(true);
    ledger::reset_peak();
    let line = line!() + 1;
    let big = Matrix::zeros(100, 50);
    let small = Buffer::<f64>::zeros(10);
    let copy = big.clone();
    drop(copy);
    // After the peak: a smaller buffer must not enter the peak's picture.
    let later = Buffer::<u8>::zeros(4);
    let sites = ledger::peak_sites();
    let at = |l: u32| format!("{}:{l}", file!());
    assert_eq!(
        sites,
        vec![(at(line), 100 * 50 * 4), (at(line + 2), 100 * 50 * 4), (at(line + 1), 80)],
        "the peak held `big`, its copy and `small`"
    );
    drop((big, small, later));
    ledger::reset_peak();
    assert!(ledger::peak_sites().is_empty(), "everything was released");
    ledger::trace_sites(false);
}
