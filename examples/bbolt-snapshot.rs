//! Writes an etcd 3.5 snapshot directly in bbolt's format, for the benchmarks
//! (scripts/lib/bench-node.sh), with the generator tests/etcd_restore_large.rs uses.
//!
//! usage: bbolt-snapshot PATH MIB large|small
//!
//! Prints `revision R`, `keys K`, a `sample KEY SHA256` line per sampled key (the SHA-256 of its
//! latest value) and, for the small-object shape, `deleted KEY`: what a real etcd serving the db
//! must answer.

#[path = "../tests/common/bbolt_snapshot.rs"]
mod bbolt_snapshot;

use bbolt_snapshot::{write_snapshot, Shape};
use std::path::PathBuf;
use std::process::exit;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [path, mib, shape] = &args[..] else {
        eprintln!("usage: bbolt-snapshot PATH MIB large|small");
        exit(2);
    };
    let (Ok(mib), Ok(shape)) = (mib.parse::<u64>(), shape.parse::<Shape>()) else {
        eprintln!("bbolt-snapshot: MIB must be a number and the shape large or small, got {mib:?} {shape:?}");
        exit(2);
    };
    let made = write_snapshot(&PathBuf::from(path), mib << 20, shape);
    println!("revision {}", made.revision);
    println!("keys {}", made.keys);
    for (key, value) in &made.samples {
        let digest = ring::digest::digest(&ring::digest::SHA256, value);
        println!("sample {key} {}", hex::encode(digest));
    }
    if let Some(key) = made.deleted {
        println!("deleted {key}");
    }
}
