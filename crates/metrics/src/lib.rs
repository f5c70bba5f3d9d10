//! mailspool's metrics: one process-wide registry every part counts into, exported in
//! the Prometheus text format by the HTTP server (`GET /metrics`).
//!
//! Counting is an atomic add; nothing here takes a lock on a hot path except the first
//! use of a label set. Queue gauges (depth, oldest node, domains, disk free) are set by
//! the HTTP server's sampler from a periodic count of the spool, never per scrape.
//!
//! A minute-by-minute history of the last hour (accepted, delivered, deferred, failed)
//! is kept for the dashboard's charts.

use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// `source` label: how a message entered the spool.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    /// `send`, `drop`, `smtp` or `http`.
    pub source: &'static str,
}

/// Labels of a delivery outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    /// `delivered`, `deferred`, `failed`.
    pub result: &'static str,
    /// Enhanced status class of the reply: `2`, `4`, `5`, or `none` (no reply: a
    /// connection or DNS failure).
    pub class: &'static str,
}

/// `reason` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why.
    pub reason: &'static str,
}

/// `tls` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TlsLabel {
    /// `yes` or `no`.
    pub tls: &'static str,
}

/// `policy` label: the TLS policy an outbound transaction followed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabel {
    /// `dane`, `mta-sts`, `required`, `opportunistic` or `plaintext`.
    pub policy: &'static str,
}

/// `class` label: a failure's class (`invalid_recipient`, `reputation_block`, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabel {
    /// The class.
    pub class: &'static str,
}

/// Labels of a webhook's requests.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    /// The webhook's name.
    pub webhook: String,
    /// `delivered` or `failed`.
    pub result: &'static str,
}

/// `webhook` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabel {
    /// The webhook's name.
    pub webhook: String,
}

/// Queue depth labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TierLabels {
    /// Tier number.
    pub tier: String,
    /// `true` for held nodes that return to the tier.
    pub held: &'static str,
}

/// Domain label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DomainLabel {
    /// Recipient domain (the top ones by depth only: the label set stays small).
    pub domain: String,
}

/// Every metric mailspool exports.
pub struct Metrics {
    registry: Registry,
    /// Messages committed to the spool, by source.
    pub accepted: Family<SourceLabel, Counter>,
    /// Delivery attempts of one node, by result and reply class.
    pub deliveries: Family<DeliveryLabels, Counter>,
    /// Seconds from acceptance to delivery, per delivered node.
    pub delivery_latency: Histogram,
    /// SMTP sessions open now (the listener).
    pub smtp_sessions_open: Gauge,
    /// SMTP sessions accepted since start.
    pub smtp_sessions: Counter,
    /// SMTP connections refused, by reason.
    pub smtp_refused: Family<ReasonLabel, Counter>,
    /// SMTP sessions that turned TLS on (STARTTLS, or an smtps port's handshake).
    pub smtp_tls_sessions: Counter,
    /// Outbound SMTP transactions, by whether TLS was used.
    pub outbound_tls: Family<TlsLabel, Counter>,
    /// Outbound transactions by the TLS policy they followed.
    pub outbound_policy: Family<PolicyLabel, Counter>,
    /// DNS lookups asked of the resolver.
    pub dns_lookups: Counter,
    /// DNS answers served from the cache.
    pub dns_cache_hits: Counter,
    /// Recipients refused for good or expired, by failure class.
    pub bounces: Family<ClassLabel, Counter>,
    /// Bounce reports (non-delivery reports) queued to senders.
    pub bounce_reports: Counter,
    /// Webhook requests, by webhook and result.
    pub webhook_requests: Family<WebhookLabels, Counter>,
    /// 1 for a webhook disabled after failing too long.
    pub webhook_disabled: Family<WebhookLabel, Gauge>,
    /// "Delayed" reports (RFC 3464 `Action: delayed`) queued.
    pub delay_warnings: Counter,
    /// Throttling replies (421, 4.7.28, "rate limited") after which a destination's
    /// mail was held back for a cooling period.
    pub throttled: Counter,
    /// Deliveries left for later by the shaping gate (cooling, rate, window full).
    pub shaping_waits: Counter,
    /// HTTP requests refused for authentication, by reason.
    pub http_auth_failures: Family<ReasonLabel, Counter>,
    /// Nodes queued now, by tier and held.
    pub queue_nodes: Family<TierLabels, Gauge>,
    /// Age of the oldest queued node, seconds.
    pub oldest_node_age: Gauge,
    /// Nodes of the top destination domains.
    pub domain_nodes: Family<DomainLabel, Gauge>,
    /// Bytes free for the spool's owner on its file system.
    pub disk_free: Gauge,
    /// Files set aside in `corrupt/`, never delivered (should be 0).
    pub corrupt_files: Gauge,
    /// Seconds the last count of the spool took.
    pub queue_count_duration: Gauge<f64, AtomicU64>,
    /// Unix time of the last count of the spool.
    pub queue_count_time: Gauge,
    history: Mutex<History>,
}

/// Per-minute counts for the dashboard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Minute {
    /// Minute (unix time / 60).
    pub minute: u64,
    /// Messages accepted.
    pub accepted: u64,
    /// Nodes delivered.
    pub delivered: u64,
    /// Nodes deferred.
    pub deferred: u64,
    /// Nodes failed for good.
    pub failed: u64,
}

#[derive(Default)]
struct History {
    minutes: std::collections::VecDeque<Minute>,
}

impl History {
    fn bump(&mut self, f: impl FnOnce(&mut Minute)) {
        let minute = unix_now() / 60;
        if self.minutes.back().is_none_or(|m| m.minute != minute) {
            self.minutes.push_back(Minute {
                minute,
                ..Default::default()
            });
            while self.minutes.len() > 60 {
                self.minutes.pop_front();
            }
        }
        if let Some(m) = self.minutes.back_mut() {
            f(m);
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Metrics {
    fn new() -> Metrics {
        let mut r = Registry::with_prefix("mailspool");
        let m = Metrics {
            accepted: Family::default(),
            deliveries: Family::default(),
            // 10 ms to ~3 days.
            delivery_latency: Histogram::new(exponential_buckets(0.01, 4.0, 13)),
            smtp_sessions_open: Gauge::default(),
            smtp_sessions: Counter::default(),
            smtp_refused: Family::default(),
            smtp_tls_sessions: Counter::default(),
            outbound_tls: Family::default(),
            outbound_policy: Family::default(),
            dns_lookups: Counter::default(),
            dns_cache_hits: Counter::default(),
            bounces: Family::default(),
            bounce_reports: Counter::default(),
            webhook_requests: Family::default(),
            webhook_disabled: Family::default(),
            delay_warnings: Counter::default(),
            throttled: Counter::default(),
            shaping_waits: Counter::default(),
            http_auth_failures: Family::default(),
            queue_nodes: Family::default(),
            oldest_node_age: Gauge::default(),
            domain_nodes: Family::default(),
            disk_free: Gauge::default(),
            corrupt_files: Gauge::default(),
            queue_count_duration: Gauge::default(),
            queue_count_time: Gauge::default(),
            history: Mutex::default(),
            registry: Registry::default(),
        };
        r.register(
            "messages_accepted",
            "Messages committed to the spool by this process, by source",
            m.accepted.clone(),
        );
        r.register(
            "deliveries",
            "Delivery attempts of one recipient, by result and enhanced status class",
            m.deliveries.clone(),
        );
        r.register_with_unit(
            "delivery_latency",
            "Time from acceptance to delivery of a recipient",
            Unit::Seconds,
            m.delivery_latency.clone(),
        );
        r.register(
            "smtp_sessions_open",
            "SMTP sessions open now",
            m.smtp_sessions_open.clone(),
        );
        r.register(
            "smtp_sessions",
            "SMTP sessions accepted",
            m.smtp_sessions.clone(),
        );
        r.register(
            "smtp_sessions_refused",
            "SMTP connections refused, by reason",
            m.smtp_refused.clone(),
        );
        r.register(
            "smtp_tls_sessions",
            "SMTP sessions that turned TLS on (STARTTLS or smtps)",
            m.smtp_tls_sessions.clone(),
        );
        r.register(
            "outbound_transactions",
            "Outbound SMTP transactions, by whether TLS protected them",
            m.outbound_tls.clone(),
        );
        r.register(
            "outbound_tls_policy",
            "Outbound SMTP transactions, by the TLS policy followed (dane, mta-sts, required, opportunistic, plaintext)",
            m.outbound_policy.clone(),
        );
        r.register("dns_lookups", "DNS lookups made", m.dns_lookups.clone());
        r.register(
            "dns_cache_hits",
            "DNS answers served from the cache",
            m.dns_cache_hits.clone(),
        );
        r.register(
            "bounces",
            "Recipients refused for good or expired, by failure class",
            m.bounces.clone(),
        );
        r.register(
            "webhook_requests",
            "Webhook requests, by webhook and result",
            m.webhook_requests.clone(),
        );
        r.register(
            "webhook_disabled",
            "1 for a webhook disabled after failing too long",
            m.webhook_disabled.clone(),
        );
        r.register(
            "bounce_reports",
            "Bounce reports queued to senders",
            m.bounce_reports.clone(),
        );
        r.register(
            "delay_warnings",
            "Reports to senders that a message is delayed (RFC 3464 Action: delayed)",
            m.delay_warnings.clone(),
        );
        r.register(
            "throttled",
            "Throttling replies from receivers (the destination then cools)",
            m.throttled.clone(),
        );
        r.register(
            "shaping_waits",
            "Deliveries left for a later pass by traffic shaping",
            m.shaping_waits.clone(),
        );
        r.register(
            "http_auth_failures",
            "HTTP requests refused for authentication, by reason",
            m.http_auth_failures.clone(),
        );
        r.register(
            "queue_nodes",
            "Queued nodes (one per recipient), by tier and held",
            m.queue_nodes.clone(),
        );
        r.register_with_unit(
            "queue_oldest_node_age",
            "Age of the oldest queued node",
            Unit::Seconds,
            m.oldest_node_age.clone(),
        );
        r.register(
            "queue_domain_nodes",
            "Queued nodes of the destination domains with the most",
            m.domain_nodes.clone(),
        );
        r.register_with_unit(
            "spool_disk_free",
            "Space free on the spool's file system",
            Unit::Bytes,
            m.disk_free.clone(),
        );
        r.register(
            "spool_corrupt_files",
            "Files set aside in corrupt/, never delivered: each needs a person",
            m.corrupt_files.clone(),
        );
        r.register_with_unit(
            "queue_count_duration",
            "Time the last count of the spool took",
            Unit::Seconds,
            m.queue_count_duration.clone(),
        );
        r.register(
            "queue_count_timestamp_seconds",
            "Unix time of the last count of the spool",
            m.queue_count_time.clone(),
        );
        // Known label sets start at zero: a dashboard's rate() sees the first event.
        for source in ["send", "drop", "smtp", "http"] {
            let _ = m.accepted.get_or_create(&SourceLabel { source });
        }
        // The failure classes of mailspool-events' `Class`.
        for class in [
            "invalid_recipient",
            "mailbox_full",
            "policy_block",
            "reputation_block",
            "dns_failure",
            "tls_failure",
            "rate_limit",
            "too_large",
            "other",
        ] {
            let _ = m.bounces.get_or_create(&ClassLabel { class });
        }
        for (result, class) in [
            ("delivered", "2"),
            ("deferred", "4"),
            ("deferred", "none"),
            ("failed", "5"),
            ("failed", "none"),
        ] {
            let _ = m
                .deliveries
                .get_or_create(&DeliveryLabels { result, class });
        }
        for reason in ["max_connections", "max_connections_per_ip"] {
            let _ = m.smtp_refused.get_or_create(&ReasonLabel { reason });
        }
        for reason in ["missing", "malformed", "unknown", "expired", "scope"] {
            let _ = m.http_auth_failures.get_or_create(&ReasonLabel { reason });
        }
        for tls in ["yes", "no"] {
            let _ = m.outbound_tls.get_or_create(&TlsLabel { tls });
        }
        for policy in ["dane", "mta-sts", "required", "opportunistic", "plaintext"] {
            let _ = m.outbound_policy.get_or_create(&PolicyLabel { policy });
        }
        Metrics { registry: r, ..m }
    }

    /// A message committed by `source` (`send`, `drop`, `smtp`, `http`).
    pub fn accepted(&self, source: &'static str) {
        self.accepted.get_or_create(&SourceLabel { source }).inc();
        self.bump(|m| m.accepted += 1);
    }

    /// A recipient's delivery attempt ended: `result` is `delivered`, `deferred` or
    /// `failed`; `reply` the server's reply (its first digit is the class);
    /// `queued_at` the unix time the message was accepted.
    pub fn delivery(&self, result: &'static str, reply: &str, queued_at: Option<u64>) {
        let class = match reply.trim_start().as_bytes().first() {
            Some(b'2') => "2",
            Some(b'4') => "4",
            Some(b'5') => "5",
            _ => "none",
        };
        self.deliveries
            .get_or_create(&DeliveryLabels { result, class })
            .inc();
        if result == "delivered"
            && let Some(t) = queued_at
        {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            self.delivery_latency.observe((now - t as f64).max(0.0));
        }
        self.bump(|m| match result {
            "delivered" => m.delivered += 1,
            "deferred" => m.deferred += 1,
            _ => m.failed += 1,
        });
    }

    /// A webhook request ended (`delivered` or `failed`).
    pub fn webhook(&self, webhook: &str, result: &'static str) {
        self.webhook_requests
            .get_or_create(&WebhookLabels {
                webhook: webhook.to_owned(),
                result,
            })
            .inc();
    }

    /// A webhook was disabled (or started again).
    pub fn webhook_disabled(&self, webhook: &str, disabled: bool) {
        self.webhook_disabled
            .get_or_create(&WebhookLabel {
                webhook: webhook.to_owned(),
            })
            .set(i64::from(disabled));
    }

    /// A recipient bounced or expired with a failure of `class`.
    pub fn bounce(&self, class: &'static str) {
        self.bounces.get_or_create(&ClassLabel { class }).inc();
    }

    fn bump(&self, f: impl FnOnce(&mut Minute)) {
        self.history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .bump(f);
    }

    /// The last hour, one entry per minute, oldest first (minutes with nothing
    /// included as zeros).
    pub fn last_hour(&self) -> Vec<Minute> {
        let now = unix_now() / 60;
        let h = self.history.lock().unwrap_or_else(|e| e.into_inner());
        (now.saturating_sub(59)..=now)
            .map(|minute| {
                h.minutes
                    .iter()
                    .find(|m| m.minute == minute)
                    .copied()
                    .unwrap_or(Minute {
                        minute,
                        ..Default::default()
                    })
            })
            .collect()
    }

    /// The registry in the Prometheus text format (version 0.0.4).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_show_in_the_text_format_with_conventional_names() {
        let m = Metrics::new();
        m.accepted("http");
        m.accepted("http");
        m.delivery("delivered", "250 2.0.0 ok", Some(unix_now() - 5));
        m.delivery("deferred", "451 4.3.0 later", None);
        m.delivery("deferred", "connection refused", None);
        m.queue_nodes
            .get_or_create(&TierLabels {
                tier: "0".into(),
                held: "false",
            })
            .set(7);
        let text = m.encode();
        assert!(
            text.contains("mailspool_messages_accepted_total{source=\"http\"} 2"),
            "{text}"
        );
        assert!(text.contains("mailspool_deliveries_total{result=\"deferred\",class=\"4\"} 1"));
        assert!(text.contains("mailspool_deliveries_total{result=\"deferred\",class=\"none\"} 1"));
        assert!(text.contains("mailspool_delivery_latency_seconds_count 1"));
        assert!(
            text.contains("mailspool_delivery_latency_seconds_bucket{le=\"10.24\"} 1"),
            "{text}"
        );
        assert!(text.contains("mailspool_queue_nodes{tier=\"0\",held=\"false\"} 7"));
        assert!(text.contains("# TYPE mailspool_spool_disk_free_bytes gauge"));
        assert!(text.contains("# TYPE mailspool_spool_corrupt_files gauge"));
        let hour = m.last_hour();
        assert_eq!(hour.len(), 60);
        let last = hour.last().unwrap();
        assert_eq!((last.accepted, last.delivered, last.deferred), (2, 1, 2));
    }
}
