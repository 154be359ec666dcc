//! Entry points of the fuzz targets (`fuzz/fuzz_targets/`, one per function; docs/fuzzing.md),
//! built only with the `fuzzing` feature. Each feeds bytes to the real parsers that see
//! a stranger's or an agent's bytes, the way the proxy and the client feed them, and
//! asserts what is cheap to assert: a prefix answers "need more" or the whole input's
//! answer, a split input the unsplit one's, a framing delivers exactly the payloads.
//!
//! Most inputs start with one control byte (`ctl`) that picks a mode or a limit and how
//! the rest is cut into reads (`stream::cuts`); the rest is what the peer sends. The async
//! targets run on a current-thread runtime with paused time, so timeouts inside the code
//! under test fire as soon as nothing else can run, and a read never waits for a peer.

mod router;
#[cfg(test)]
mod seeds;
mod stream;
mod tunnel;
mod wire;

pub use router::{client_hello, config, detect, proxy_header, route, upgrade_request};
pub use tunnel::{tunnel_frame, tunnel_session};
pub use wire::{client_upgrade, db_first_packet, ping_frame, websocket};

use std::future::Future;

/// The smallest `limits.max_ws_frame_bytes` the configuration allows: the framings send
/// the user's bytes in chunks of up to this much, so the user writes only under a limit at
/// least this large (smaller limits test the receiving side alone).
const CONFIG_MIN_FRAME: usize = 16 * 1024;

/// The first byte, and the rest.
fn split(data: &[u8]) -> (u8, &[u8]) {
    data.split_first().map_or((0, data), |(&c, rest)| (c, rest))
}

/// Runs `fut` to completion on a fresh current-thread runtime with paused time; tasks it
/// spawned and left behind end with the runtime.
fn block_on<F: Future>(fut: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime")
        .block_on(fut)
}
