//! 0.50's Perl interface (perl/lib/Mail/Spool.pm, FFI::Platypus over libmailspool.so):
//! runs its `prove` suite (perl/t) against the library cargo just built, then reads the
//! spool it wrote back through the Rust library.
//!
//! `.ci/run` installs FFI::Platypus (Debian's libffi-platypus-perl). Without it this test
//! says so and passes on a developer's machine; under CI (`CI=true`) it fails.

mod support;

use std::path::Path;
use std::process::Command;

fn have_platypus() -> bool {
    let ok = Command::new("perl")
        .args(["-MFFI::Platypus", "-e1"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("CI").is_err(),
            "FFI::Platypus is missing under CI: .ci/run installs libffi-platypus-perl"
        );
        eprintln!(
            "skipped: Perl's FFI::Platypus is not installed (apt install libffi-platypus-perl)"
        );
    }
    ok
}

#[test]
fn prove_runs_the_perl_suite() {
    if !have_platypus() {
        return;
    }
    let perl = Path::new(env!("CARGO_MANIFEST_DIR")).join("perl");
    let out = Command::new("prove")
        .arg("-v")
        .arg("-I")
        .arg(perl.join("lib"))
        .arg(perl.join("t"))
        .env("MAILSPOOL_LIB", support::lib_dir().join("libmailspool.so"))
        .env("MAILSPOOL_BIN", support::mailspool_bin())
        .output()
        .expect("prove (perl) runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Result: PASS"), "{stdout}");
}

/// What Perl queued is an ordinary mailspool message: read it back through Rust.
#[test]
fn perl_queues_what_rust_reads() {
    if !have_platypus() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let perl = Path::new(env!("CARGO_MANIFEST_DIR")).join("perl/lib");
    let script = r#"
        # A string with wide characters is sent as UTF-8.
        use Mail::Spool;
        my $s = Mail::Spool->new(dequeue_dir => $ARGV[0]);
        print $s->send_mail(to => ['r1@rcpt.test', 'R2 <r2@rcpt.test>'], from => 'p@sender.test',
            message => "Subject: from perl\nBcc: hidden\@rcpt.test\n\nbody \x{263a}\n");
    "#;
    let out = Command::new("perl")
        .arg("-I")
        .arg(&perl)
        .args(["-e", script])
        .arg(&spool)
        .env("MAILSPOOL_LIB", support::lib_dir().join("libmailspool.so"))
        .env("MAILSPOOL_CONFIG", support::quiet_config(dir.path()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8(out.stdout).unwrap();
    let q = support::queue(&spool);
    assert_eq!(
        q.iter()
            .map(|e| (e.to.as_str(), e.from.as_str(), e.id.as_str()))
            .collect::<Vec<_>>(),
        [
            ("r1@rcpt.test", "p@sender.test", id.as_str()),
            ("r2@rcpt.test", "p@sender.test", id.as_str())
        ]
    );
    let text = support::node_text(&spool, &q[0]);
    assert!(!text.contains("hidden@"), "{text}");
    assert!(text.ends_with("\n\nbody \u{263a}\n"), "{text:?}");
}
