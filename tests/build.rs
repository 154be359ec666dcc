//! Sets `cfg(ci)` when `CI=true`. The eBPF tests that need root and CAP_BPF carry
//! `#[cfg_attr(not(ci), ignore = "…")]`: under CI they run and a kernel refusal fails them;
//! elsewhere they are listed as ignored (`cargo test -- --ignored` runs them anyway).

fn main() {
    println!("cargo::rustc-check-cfg=cfg(ci)");
    println!("cargo::rerun-if-env-changed=CI");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        println!("cargo::rustc-cfg=ci");
    }
}
