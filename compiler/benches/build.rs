//! `check` + `build` of a generated 100,000-domain policy: parse, check,
//! sign, and the blob read back by the relay's path (verify, decode, index).
//!
//! Run: `cargo bench -p tlspolc --bench build`. For peak RSS of the real
//! command see `docs/blob-format.md` (`/usr/bin/time -v tlspolc build …`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../examples/genpolicy.rs"]
mod genpolicy;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use policy::blob::{self, SigningKey};

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.tlspol");
    std::fs::write(&path, genpolicy::generate(100_000, 10_000)).unwrap();
    let key = SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().unwrap()).unwrap();
    let compiled = tlspolc::compile_file(&path).unwrap();
    let bytes = blob::sign(&compiled.policy, 0, &key).unwrap();

    let mut g = c.benchmark_group("policy_100k");
    g.sample_size(10);
    g.bench_function("check", |b| {
        b.iter(|| {
            black_box(
                tlspolc::compile_file(black_box(&path))
                    .unwrap()
                    .policy
                    .serial,
            )
        })
    });
    g.bench_function("check_and_sign", |b| {
        b.iter(|| {
            let c = tlspolc::compile_file(black_box(&path)).unwrap();
            black_box(blob::sign(&c.policy, 0, &key).unwrap().len())
        })
    });
    g.bench_function("sign_only", |b| {
        b.iter(|| {
            black_box(
                blob::sign(black_box(&compiled.policy), 0, &key)
                    .unwrap()
                    .len(),
            )
        })
    });
    g.bench_function("verify_decode_index", |b| {
        b.iter(|| {
            let (_, p) = blob::verify_and_decode(black_box(&bytes), &[key.public_key()]).unwrap();
            black_box(policy::CompiledPolicy::new(p))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
