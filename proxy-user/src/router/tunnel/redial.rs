//! Agents redialling a new process. A binary upgrade's successor (or a restarted proxy)
//! starts accepting before the agents' tunnels to it are up: the old process's drain
//! notice makes each agent dial the new one, which takes tens of milliseconds, longer
//! under load. A client of an agent's service whose connection the new process accepts
//! in that window would find no agent and get `unrecognized_name`. So during the first
//! [`REDIAL_GRACE`] of the process, a connection whose name no route or agent serves
//! waits, up to [`REDIAL_WAIT`] and never past its handshake deadline, for a tunnel to be
//! admitted, and is routed again each time one is. Afterwards, or without a `tunnel:`
//! section, the answer is immediate as always. The wait costs a timer and the
//! connection's `unclassified` place, which that class's budget bounds.

use super::Registry;
use crate::router::hello::ClientHello;
use crate::router::route::{Decision, RejectAlert, Table};
use tokio::time::{timeout_at, Instant};
use tracing::debug;

/// How long after the process starts a connection may wait for agents.
pub(crate) const REDIAL_GRACE: std::time::Duration = std::time::Duration::from_secs(10);
/// How long one connection waits at most.
pub(crate) const REDIAL_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Routes `hello` with `table` and the connected agents; when `waits` (the configuration
/// has a `tunnel:` section), waits for agents to redial as the module says, until
/// `deadline` at most.
pub(crate) async fn route<'a, T>(
    table: &'a Table<T>,
    hello: &ClientHello,
    registry: &Registry,
    waits: bool,
    deadline: Instant,
) -> Decision<'a, T> {
    let now = Instant::now();
    let until = (registry.started + REDIAL_GRACE)
        .min(now + REDIAL_WAIT)
        .min(deadline);
    loop {
        let changed = registry.changed.notified();
        tokio::pin!(changed);
        // Registered before routing: an agent admitted in between still wakes us.
        changed.as_mut().enable();
        let decision = table.route(hello, registry);
        let unserved = matches!(
            decision,
            Decision::Reject {
                alert: RejectAlert::UnrecognizedName,
                ..
            }
        );
        if !unserved || !waits || Instant::now() >= until {
            return decision;
        }
        debug!("no agent serves this name yet: waiting for the agents to redial");
        if timeout_at(until, changed).await.is_err() {
            return table.route(hello, registry);
        }
    }
}
