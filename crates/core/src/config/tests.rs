//! Reading the configuration: 0.50's names, defaults, and what is refused.

use super::*;

#[test]
fn parses_050_names_and_defaults() {
    let file: ConfigFile = toml::from_str(
        "dequeue_dir = \"/x\"\ndequeue_periods = [0, 60, 120]\nmax_connection_time = 30\nusage_log = false\n",
    )
    .unwrap();
    let c = Config::from_parts(file).unwrap();
    assert_eq!(c.spool_dir, PathBuf::from("/x"));
    assert_eq!(c.spool.periods, [0, 60, 120]);
    assert_eq!(c.spool.priorities, [1, 3, 9]);
    assert_eq!(c.spool.max_connection_time, Duration::from_secs(30));
    assert_eq!(c.spool.stale_lock_after, Duration::from_secs(300));
    assert_eq!(c.spool.legacy_lock_timeout, Duration::from_secs(21_602));
    assert!(!c.spool.usage_log);
    assert_eq!(c.max_message_size, DEFAULT_MAX_MESSAGE_SIZE);
}

#[test]
fn the_contrib_example_with_every_line_uncommented_is_the_default() {
    let text = include_str!("../../../../contrib/mailspool.toml");
    let uncommented: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| l.contains(" = "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(uncommented.lines().count() >= 12, "{uncommented}");
    let c = Config::from_parts(toml::from_str(&uncommented).unwrap()).unwrap();
    let d = Config::default();
    assert_eq!(c.spool, d.spool);
    assert_eq!(c.dequeue_timeout, d.dequeue_timeout);
    assert_eq!(c.max_dequeue_processes, d.max_dequeue_processes);
    assert_eq!(c.max_message_size, d.max_message_size);
    assert_eq!(c.deliver.mx_tls, d.deliver.mx_tls);
    assert_eq!(c.deliver.per_host_limit, d.deliver.per_host_limit);
    assert_eq!(c.shutdown_grace, d.shutdown_grace);
    assert_eq!(c.deliver.delay_warning_time, d.deliver.delay_warning_time);
    assert_eq!(c.deliver.mta_sts, d.deliver.mta_sts);
    // The examples (## lines) parse too.
    let examples: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .filter(|l| {
            !l.starts_with("relayhost = [")
                && !l.contains("password_file")
                && !l.starts_with("dnssec_trust_anchors")
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let file: ConfigFile = toml::from_str(&examples).unwrap_or_else(|e| panic!("{e}\n{examples}"));
    assert!(file.relayhost.is_some() && file.routes.is_some() && file.timeouts.is_some());
    assert!(file.http.as_ref().is_some_and(|h| h.listen.is_some()));
    assert_eq!(file.dkim.as_ref().map(Vec::len), Some(1));
    // (Its password_file line was left out above, and the trust anchor file, which
    // is read when the configuration is: Debian's dns-root-data may not be here.)
    assert!(text.contains("## dnssec_trust_anchors = \"/usr/share/dns/root.ds\""));
    let c = Config::from_parts(ConfigFile {
        relay: None,
        ..file
    })
    .unwrap();
    let google = c.deliver.shaping.rules.iter().find(|r| r.name == "google");
    let google = google.unwrap();
    assert_eq!(google.limits.max_connections, 10);
    assert_eq!(google.mx, ["*.google.com", "*.googlemail.com"], "kept");
    assert_eq!(
        google.limits.max_message_rate.unwrap().per,
        Duration::from_secs(60)
    );
    let (key, limits) = c.deliver.shaping.destination(
        "sub.partner.example",
        "mx.partner.example",
        "mx.partner.example:25",
        &c.deliver.default_limits(),
    );
    assert_eq!((key.as_str(), limits.max_connections), ("partner", 2));
    assert_eq!(
        c.dkim[0].key_file.to_str(),
        Some("dkim/mail2026._domainkey.example.com.pem")
    );
}

#[test]
fn shaping_mistakes_are_configuration_errors() {
    for bad in [
        "[shaping]\n[[shaping.destination]]\nname = \"x\"\n",
        "[shaping]\n[[shaping.destination]]\nname = \"x\"\ndomains = [\"a.test\"]\nmax_message_rate = \"lots\"\n",
        "[shaping]\nbogus = 1\n",
        "[[dkim]]\ndomain = \"a.test\"\nselector = \"s\"\nkey_file = \"k\"\nalgorithm = \"dsa\"\n",
    ] {
        let parsed = toml::from_str::<ConfigFile>(bad)
            .map_err(|e| e.to_string())
            .and_then(|f| Config::from_parts(f).map_err(|e| e.to_string()));
        assert!(parsed.is_err(), "{bad}");
    }
}

#[test]
fn api_tokens_default_to_beside_the_configuration_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mailspool.toml");
    std::fs::write(&path, "[http]\nlisten = \"127.0.0.1:8025\"\n").unwrap();
    let c = Config::from_file(&path).unwrap();
    assert_eq!(c.http.unwrap().tokens_file, dir.path().join("tokens"));
    std::fs::write(&path, "[http]\ntokens_file = \"/srv/t\"\n").unwrap();
    let c = Config::from_file(&path).unwrap();
    assert_eq!(c.http.unwrap().tokens_file, PathBuf::from("/srv/t"));
    std::fs::write(&path, "").unwrap();
    assert!(Config::from_file(&path).unwrap().http.is_none());
}

#[test]
fn fqdn_from_etc_hosts() {
    let hosts = "127.0.0.1 localhost\n10.0.0.5 mail.example.org mail # main\n";
    assert_eq!(
        fqdn_from_hosts("mail", hosts).as_deref(),
        Some("mail.example.org")
    );
    assert_eq!(fqdn_from_hosts("other", hosts), None);
}

#[test]
fn refuses_typos_and_mismatches() {
    assert!(toml::from_str::<ConfigFile>("dequeue_dri = \"/x\"").is_err());
    let file: ConfigFile =
        toml::from_str("dequeue_periods = [0, 60]\ndequeue_priority = [1]").unwrap();
    assert!(Config::from_parts(file).is_err());
    let two_v4: ConfigFile =
        toml::from_str("bind_address = [\"192.0.2.1\", \"192.0.2.2\"]").unwrap();
    assert!(Config::from_parts(two_v4).is_err());
    let bad: ConfigFile = toml::from_str("bind_address = \"eth0\"").unwrap();
    assert!(Config::from_parts(bad).is_err());
    let ok: ConfigFile = toml::from_str("bind_address = [\"192.0.2.1\", \"2001:db8::1\"]").unwrap();
    assert_eq!(
        Config::from_parts(ok).unwrap().deliver.bind_addresses.len(),
        2
    );
}
