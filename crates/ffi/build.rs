//! Writes include/mailspool.h from the crate's `extern "C"` items with cbindgen, so the
//! header can never disagree with the library. Rewritten only when it changes.

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    let config = cbindgen::Config::from_file(format!("{dir}/cbindgen.toml"))
        .expect("crates/ffi/cbindgen.toml is readable");
    let bindings = cbindgen::Builder::new()
        .with_crate(&dir)
        .with_config(config)
        .generate()
        .expect("cbindgen understands src/lib.rs");
    let path = format!("{dir}/include/mailspool.h");
    let mut text = Vec::new();
    bindings.write(&mut text);
    if std::fs::read(&path).ok().as_deref() != Some(&text[..]) {
        std::fs::write(&path, text).expect("include/mailspool.h is writable");
    }
}
