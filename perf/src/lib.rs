//! `hull-bench`: benchmarks that measure hull against a peer in the same run.
//!
//! Not built yet: see the perf issue.
