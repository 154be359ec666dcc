//! Types shared by the kernel programs (`proxy-ebpf`) and userspace (`proxy-user`).
//!
//! Everything here is `#[repr(C)]` and padding-free so that the same bytes mean the same
//! thing on both sides of a BPF map.
#![no_std]
