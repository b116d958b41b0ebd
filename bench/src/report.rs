//! Latency percentiles and the human-readable form of the reports (JSON is
//! their `Serialize` form).

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::idle::IdleReport;
use crate::load::LoadReport;
use crate::proc_stats::Usage;

/// Percentiles of an HDR histogram, in µs.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub min: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl Percentiles {
    /// `None` for an empty histogram.
    pub fn of(histogram: &Histogram<u64>) -> Option<Percentiles> {
        if histogram.is_empty() {
            return None;
        }
        Some(Percentiles {
            count: histogram.len(),
            min: histogram.min(),
            p50: histogram.value_at_quantile(0.5),
            p90: histogram.value_at_quantile(0.9),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
            max: histogram.max(),
            mean: histogram.mean(),
        })
    }

    fn line(&self) -> String {
        let ms = |us: u64| us as f64 / 1000.0;
        format!(
            "p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms ({} samples)",
            ms(self.p50),
            ms(self.p90),
            ms(self.p99),
            ms(self.p999),
            ms(self.max),
            self.count
        )
    }
}

fn usage_line(who: &str, usage: &Usage) -> String {
    format!(
        "{who}: CPU {:.2} s ({:.0}% of one core), RSS {} -> {} KiB (max {} KiB)\n",
        usage.cpu_seconds,
        usage.cpu_percent,
        usage.rss_kib_start,
        usage.rss_kib_end,
        usage.rss_kib_max
    )
}

impl LoadReport {
    pub fn to_text(&self) -> String {
        let o = &self.options;
        let mut text = String::new();
        let kind = if o.groups > 0 {
            format!("{} durable group(s), ACKed", o.groups)
        } else {
            "ephemeral".to_owned()
        };
        let _ = writeln!(
            text,
            "load: {} publisher(s) x {} in flight, {} subscriber(s) ({kind}), {} B payloads{}",
            o.publishers,
            o.in_flight,
            o.subscribers,
            o.payload_bytes,
            o.rate
                .map(|r| format!(", paced at {r:.0} events/s"))
                .unwrap_or_default()
        );
        let _ = writeln!(
            text,
            "published: {} events in {:.2} s = {:.0} events/s (PUBACK after sync){}",
            self.published,
            self.publish_seconds,
            self.publish_rate,
            if self.rate_limited > 0 {
                format!(", {} refused rate_limited", self.rate_limited)
            } else {
                String::new()
            }
        );
        if let Some(latency) = &self.publish_latency_us {
            let _ = writeln!(text, "publish -> PUBACK: {}", latency.line());
        }
        if self.expected_deliveries > 0 {
            let _ = writeln!(
                text,
                "delivered: {} of {} in {:.2} s = {:.0} deliveries/s{}",
                self.delivered,
                self.expected_deliveries,
                self.deliver_seconds,
                self.delivery_rate,
                if o.backlog {
                    " (backlog from the store)"
                } else {
                    ""
                }
            );
        }
        if let Some(latency) = &self.deliver_latency_us {
            let _ = writeln!(text, "publish -> deliver: {}", latency.line());
        }
        if let Some(hub) = &self.hub {
            text.push_str(&usage_line("hub", hub));
        }
        if let Some(harness) = &self.harness {
            text.push_str(&usage_line("harness", harness));
        }
        text
    }
}

impl IdleReport {
    pub fn to_text(&self) -> String {
        format!(
            "idle: {} authenticated idle connections: hub RSS {} -> {} KiB = {:.0} bytes ({:.1} KiB) per connection\n",
            self.connections,
            self.rss_kib_before,
            self.rss_kib_after,
            self.bytes_per_connection,
            self.bytes_per_connection / 1024.0
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_ordered_and_empty_is_none() {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        assert_eq!(Percentiles::of(&histogram), None);
        for v in 1..=10_000u64 {
            histogram.record(v).unwrap();
        }
        let p = Percentiles::of(&histogram).unwrap();
        assert_eq!(p.count, 10_000);
        assert!(p.min <= p.p50 && p.p50 <= p.p90 && p.p90 <= p.p99);
        assert!(p.p99 <= p.p999 && p.p999 <= p.max);
        assert!((4_990..=5_010).contains(&p.p50), "{p:?}");
    }
}
