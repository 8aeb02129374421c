//! Emits a raw image the way `imagegen build` does, for benchmarks:
//! `cargo run --release --example emit -- RAW OUT [THREADS]`.

use imagegen::emit::{BuildRecord, EmitOptions, emit};
use std::path::Path;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [raw, out, rest @ ..] = args.as_slice() else {
        anyhow::bail!("usage: emit RAW OUT [THREADS]");
    };
    let options = EmitOptions {
        threads: rest.first().map(|t| t.parse()).transpose()?,
        ..EmitOptions::default()
    };
    let build = BuildRecord {
        imagegen_version: env!("CARGO_PKG_VERSION").into(),
        board: "bench".into(),
        ..BuildRecord::default()
    };
    let manifest = emit(Path::new(raw), Path::new(out), build, &options)?;
    println!("{}", manifest.output.sha256);
    Ok(())
}
