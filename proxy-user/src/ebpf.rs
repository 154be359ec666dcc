//! eBPF front end: the embedded object built by `build.rs` and its loader (issue 3).
