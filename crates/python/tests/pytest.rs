//! The Python package as a user gets it: maturin builds the abi3 wheel from this crate,
//! pip installs it into a new venv, and the pytest suite (tests/test_mailspool.py) runs
//! there; then a second venv without any other packages installs the same wheel and
//! queues a message, as `pip install mailspool-*.whl` on a fresh machine would.
//!
//! `.ci/run` installs maturin and pytest. Without them this test says so and passes on
//! a developer's machine; under CI (`CI=true`) it fails.

use std::path::{Path, PathBuf};
use std::process::Command;

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

fn have(module: &str) -> bool {
    let ok = Command::new(python())
        .args(["-c", &format!("import {module}")])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("CI").is_err(),
            "Python's {module} is missing under CI: .ci/run installs it"
        );
        eprintln!("skipped: {module} is not installed (python3 -m pip install maturin pytest)");
    }
    ok
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// Build the wheel into `out` with maturin (the workspace's target dir, so the crates
/// cargo just built are reused) and return its path.
fn build_wheel(out: &Path) -> PathBuf {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    run(Command::new(python())
        .args(["-m", "maturin", "build", "--quiet", "--manifest-path"])
        .arg(crate_dir.join("Cargo.toml"))
        .arg("--out")
        .arg(out)
        .arg("--interpreter")
        .arg(python()));
    let wheels: Vec<PathBuf> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "whl"))
        .collect();
    assert_eq!(wheels.len(), 1, "{wheels:?}");
    let name = wheels[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(name.contains("-abi3-"), "not an abi3 wheel: {name}");
    wheels[0].clone()
}

fn venv(dir: &Path, system_site: bool) -> PathBuf {
    let mut cmd = Command::new(python());
    cmd.args(["-m", "venv"]);
    if system_site {
        cmd.arg("--system-site-packages");
    }
    run(cmd.arg(dir));
    dir.join("bin/python")
}

#[test]
fn wheel_installs_and_its_pytest_suite_passes() {
    if !have("maturin") || !have("pytest") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let wheel = build_wheel(&tmp.path().join("wheels"));

    // pytest comes from the system's packages; mailspool only from the wheel.
    let py = venv(&tmp.path().join("test-venv"), true);
    run(Command::new(&py)
        .args(["-m", "pip", "install", "--quiet", "--no-index", "--no-deps"])
        .arg(&wheel));
    let tests = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let out = run(Command::new(&py)
        .args(["-m", "pytest", "-v", "-p", "no:cacheprovider"])
        .arg(&tests)
        .current_dir(tmp.path())
        .env_remove("MAILSPOOL_SPOOL")
        .env_remove("MAILSPOOL_CONFIG"));
    assert!(out.contains(" passed"), "{out}");
    assert!(!out.contains("skipped"), "{out}");

    // A venv with nothing else in it: the wheel needs no other package.
    let bare = venv(&tmp.path().join("bare-venv"), false);
    run(Command::new(&bare)
        .args(["-m", "pip", "install", "--quiet", "--no-index"])
        .arg(&wheel));
    let spool = tmp.path().join("spool");
    let config = tmp.path().join("mailspool.toml");
    std::fs::write(&config, "hostname = \"test.host\"\n").unwrap();
    let out = run(Command::new(&bare)
        .args([
            "-c",
            "import mailspool, sys\n\
             s = mailspool.Spool(sys.argv[1], spool=sys.argv[2])\n\
             print(s.send_mail(b'Subject: hi\\n\\nx\\n', to='bare@rcpt.test').id)\n\
             print(len(list(s.queue())))",
        ])
        .arg(&config)
        .arg(&spool));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(lines[1], "1");
    let names: Vec<String> = std::fs::read_dir(spool.join("0"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(
        names[0].contains(&format!("-{}-bare@rcpt.test-", lines[0])),
        "{names:?}"
    );
}
