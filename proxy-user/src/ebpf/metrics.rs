//! The front end's own metrics, read from its maps at each scrape: first-bytes classes
//! counted in the kernel, bytes passed up or redirected, failed redirects, SYNs dropped by
//! the per-source rate, and how many
//! sockets are registered and spliced right now (zero when nothing is open: the maps
//! leak no entries).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use proxy_common::Counter;

use super::Frontend;

/// Registered with the metrics registry when the front end is attached.
#[derive(Debug)]
pub(crate) struct FrontendCollector(pub &'static Frontend);

impl std::fmt::Debug for Frontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Frontend")
    }
}

impl Collector for FrontendCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counters = self.0.counters();
        let tally = |c: Counter| counters.iter().find(|(k, _)| *k == c).map(|(_, t)| *t);
        let class = ConstCounter::new(0u64);
        let mut family = encoder.encode_descriptor(
            "switchyard_ebpf_first_bytes",
            "New connections by the class of their first bytes, counted in the kernel",
            None,
            class.metric_type(),
        )?;
        for (counter, t) in &counters {
            if let Some(class) = counter.class() {
                let labels = [("class", class)];
                ConstCounter::new(t.events).encode(family.encode_family(&labels)?)?;
            }
        }
        for (name, help, counter) in [
            (
                "switchyard_ebpf_spliced_bytes",
                "Bytes the kernel redirected between spliced sockets",
                Counter::Spliced,
            ),
            (
                "switchyard_ebpf_passed_bytes",
                "Bytes the verdict program passed up to the proxy process",
                Counter::Passed,
            ),
            (
                "switchyard_ebpf_redirect_failed_bytes",
                "Bytes whose redirect the kernel refused (passed up instead)",
                Counter::RedirectFailed,
            ),
            (
                "switchyard_ebpf_overlap_trimmed_bytes",
                "Repeated bytes trimmed off skbs that overlapped data already received (retransmissions)",
                Counter::OverlapTrimmed,
            ),
        ] {
            let c = ConstCounter::new(tally(counter).map_or(0, |t| t.bytes));
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        for (name, help, counter) in [
            (
                "switchyard_ebpf_syn_dropped",
                "SYNs the kernel dropped: their source was over limits.classes.unclassified.per_source_rate",
                Counter::SynDropped,
            ),
            (
                "switchyard_ebpf_empty_skbs_dropped",
                "Zero-length skbs (a pure FIN or ACK) the verdict dropped on spliced sockets",
                Counter::EmptyDropped,
            ),
            (
                "switchyard_ebpf_spliced_sockets_closed",
                "Spliced sockets that closed while in the sockhash (the kernel removes them)",
                Counter::SplicedClosed,
            ),
            (
                "switchyard_ebpf_redirects_failed",
                "Redirects the kernel refused (each skb was passed up instead)",
                Counter::RedirectFailed,
            ),
            (
                "switchyard_ebpf_overlapping_skbs",
                "Skbs that began before the end of their socket's previous one (a retransmission overlapping received data); their repeated head was trimmed",
                Counter::OverlapTrimmed,
            ),
            (
                "switchyard_ebpf_first_bytes_handed_over",
                "First segments that completed a handshake, classified on the listener and handed to the new socket",
                Counter::ClassHandedOver,
            ),
            (
                "switchyard_ebpf_overlaps_untrimmed",
                "Overlapping skbs the verdict could not trim: dropped, and their pair cut",
                Counter::OverlapUntrimmed,
            ),
        ] {
            let c = ConstCounter::new(tally(counter).map_or(0, |t| t.events));
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        let (sockets, spliced) = self.0.entries();
        for (name, help, value) in [
            (
                "switchyard_ebpf_sockets",
                "Entries in the SOCKETS sockhash (sockets of spliced pairs)",
                sockets,
            ),
            (
                "switchyard_ebpf_spliced_sockets",
                "Entries in the SPLICED map (sockets of spliced pairs)",
                spliced,
            ),
        ] {
            let g = ConstGauge::new(value as i64);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        Ok(())
    }
}
