//! The address parsers' tests: recipients given as arguments, address lists in
//! headers, and properties that hold for any text.

mod recipient_tests {
    use crate::address::*;

    #[test]
    fn one_address_per_argument_or_an_error() {
        for (arg, want) in [
            ("bob@example.org", "bob@example.org"),
            (" <bob@example.org> ", "bob@example.org"),
            ("Bob Smith <bob@example.org>", "bob@example.org"),
            ("\"odd name\"@example.org", "\"odd name\"@example.org"),
            ("u@[127.0.0.1]", "u@[127.0.0.1]"),
        ] {
            assert_eq!(parse_recipient(arg).unwrap(), want, "{arg:?}");
        }
        for arg in [
            "a b@example.org",
            "a@example.org, b@example.org",
            "x@example.org\nBcc: y@example.org",
            "x@example.org\r",
            "group: a@example.org;",
            "a@example.org (comment)",
            "<@relay.example:a@example.org>",
            "-oQ@example.org",
            "",
        ] {
            assert!(parse_recipient(arg).is_err(), "{arg:?} accepted");
        }
    }
}

mod lists {
    use crate::address::*;

    fn list(s: &str) -> Vec<String> {
        parse_address_list(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    #[test]
    fn bare_local_parts_are_qualified_only_when_asked() {
        let q = Some("host.example");
        assert_eq!(
            parse_recipient_in("alice", q).unwrap(),
            "alice@host.example"
        );
        assert_eq!(
            parse_recipient_in("<root>", q).unwrap(),
            "root@host.example"
        );
        assert_eq!(
            parse_recipient_in("Cron Daemon <root>", q).unwrap(),
            "root@host.example"
        );
        assert_eq!(parse_recipient_in("bob@x.org", q).unwrap(), "bob@x.org");
        assert!(
            parse_recipient("alice").is_err(),
            "no domain without qualify"
        );
        assert!(parse_recipient_in("-oQ/tmp", q).is_err());
        assert!(parse_recipient_in("alice\nBcc: x", q).is_err());
        assert_eq!(
            parse_address_list_in("root, Bob <bob@x.org>", q).unwrap(),
            ["root@host.example", "bob@x.org"]
        );
        // A display name alone is not a mailbox.
        assert!(parse_address_list_in("Alice Smith", q).is_err());
        assert_eq!(parse_sender_in("daemon", q).unwrap(), "daemon@host.example");
        assert_eq!(parse_sender_in("<>", q).unwrap(), "");
        assert!(parse_sender_in("-f", q).is_err());
    }

    #[test]
    fn address_lists() {
        assert_eq!(
            list("\"john doe\"@example.com, Jane <jane@x.org>, (comment) bob@y.com (Bob)"),
            ["\"john doe\"@example.com", "jane@x.org", "bob@y.com"]
        );
        assert_eq!(
            list("friends: a@b.c, \"x, y\" <d@e.f>;, =?utf-8?q?Caf=C3=A9?= <cafe@z.com>"),
            ["a@b.c", "d@e.f", "cafe@z.com"]
        );
        assert_eq!(list("undisclosed-recipients:;"), Vec::<String>::new());
        assert_eq!(list("a@b.c,, ,"), ["a@b.c"]);
        assert_eq!(list("<@route.x,@r2.y:user@z.com>"), ["user@z.com"]);
        assert_eq!(list("\"a@b\"@evil.com"), ["\"a@b\"@evil.com"]);
        assert_eq!(list("\"plain\"@x.com"), ["plain@x.com"]);
        assert_eq!(
            list("user@[127.0.0.1], u@[IPv6:::1]"),
            ["user@[127.0.0.1]", "u@[IPv6:::1]"]
        );
        assert_eq!(list("Ünïcödé <üser@exämple.com>"), ["üser@exämple.com"]);
        assert_eq!(
            list("Mary Smith <mary@x.test>\r\n\t, jdoe@example.org"),
            ["mary@x.test", "jdoe@example.org"]
        );
        assert_eq!(
            list("\"Joe Q. Public\" <john.q.public@example.com>"),
            ["john.q.public@example.com"]
        );
        assert_eq!(
            list("Pete(A nice \\) chap) <pete(his account)@silly.test(his host)>"),
            ["pete@silly.test"]
        );
        assert_eq!(list(""), Vec::<String>::new());
    }

    #[test]
    fn malformed_addresses_are_named() {
        for (s, named) in [
            ("garbage here", "garbage here"),
            ("a@b@c", "a@b@c"),
            ("root", "root"),
            ("x@y.com, bad@", "bad@"),
            ("<unclosed@x.com", "<unclosed@x.com"),
            ("a..b@x.com", "a..b@x.com"),
            ("a@-x.com", "a@-x.com"),
            ("a@[1.2.3]", "a@[1.2.3]"),
            ("-oQ/tmp/@x.com", "-oQ/tmp/@x.com"),
            ("\"unclosed@x.com", "\"unclosed@x.com"),
        ] {
            let e = parse_address_list(s).expect_err(s);
            assert_eq!(e.text, named, "{s:?}: {e}");
        }
    }

    #[test]
    fn quoting_does_not_smuggle_a_leading_dash() {
        // Found by the intake fuzzer: the quotes came off after the '-' check.
        assert!(check_address("\"-oQ/tmp\"@x.com").is_err());
        assert!(parse_address_list("Evil <\"-oQ/tmp\"@x.com>").is_err());
        assert_eq!(check_address("\"a b\"@x.com").unwrap(), "\"a b\"@x.com");
    }

    #[test]
    fn limits() {
        assert!(check_address(&format!("{}@x.com", "a".repeat(64))).is_ok());
        assert!(check_address(&format!("{}@x.com", "a".repeat(65))).is_err());
        assert!(check_address(&format!("a@{}.com", "b".repeat(64))).is_err());
        assert!(check_address("a\u{7f}@x.com").is_err());
    }

    #[test]
    fn senders() {
        assert_eq!(parse_sender("").unwrap(), "");
        assert_eq!(parse_sender("<>").unwrap(), "");
        assert_eq!(parse_sender("<me@x.org>").unwrap(), "me@x.org");
        assert_eq!(parse_sender("me@x.org").unwrap(), "me@x.org");
        assert!(parse_sender("-bs").is_err());
        assert!(parse_sender("nobody").is_err());
    }

    #[test]
    fn dedup() {
        assert_eq!(dedup_key("Bob@Example.COM"), "Bob@example.com");
    }
}

mod properties {
    use crate::address::*;
    use proptest::prelude::*;

    proptest! {
        /// Any text: the list parser never panics, and whatever it accepts passes the
        /// envelope checks (no leading '-', no control characters, a domain).
        #[test]
        fn parse_address_list_is_total(text in "\\PC{0,200}") {
            if let Ok(list) = parse_address_list(&text) {
                for a in list {
                    prop_assert!(check_address(&a).is_ok(), "{a:?}");
                    prop_assert!(!a.starts_with('-'));
                }
            }
        }

        /// A well-formed address comes back as itself, alone or with a display name.
        #[test]
        fn good_addresses_round_trip(local in "[a-z0-9][a-z0-9._+-]{0,20}[a-z0-9]", domain in "[a-z][a-z0-9-]{0,10}[a-z0-9]\\.(org|test|example)") {
            let addr = format!("{local}@{domain}");
            prop_assume!(!local.contains(".."));
            prop_assert_eq!(parse_address_list(&addr).unwrap(), vec![addr.clone()]);
            prop_assert_eq!(parse_address_list(&format!("Some One <{addr}>")).unwrap(), vec![addr.clone()]);
        }
    }
}
