//! Node-name parser: never panics; what it reads as a node re-encodes to itself.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mailspool_spool::name::{NodeName, Parsed, decode, encode};

fuzz_target!(|data: &[u8]| {
    assert_eq!(decode(&encode(data)), data);
    if let Ok(name) = std::str::from_utf8(data) {
        if let Parsed::Node(n) | Parsed::Rescued(n) = NodeName::parse(name) {
            assert_eq!(NodeName::parse(&n.file_name()), Parsed::Node(n));
        }
    }
});
