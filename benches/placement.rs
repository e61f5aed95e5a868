//! Placement ring lookup cost for growing clusters; it should grow like log n.
#![allow(missing_docs)] // criterion_group! generates undocumented items.

use benchfs::placement::{PlacementKey, PlacementRing};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};

fn lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("placement_lookup");
    for servers in [16usize, 64, 256, 1024] {
        let ring = PlacementRing::new((0..servers).map(|i| format!("node{i}")), 150).unwrap();
        group.bench_with_input(BenchmarkId::new("chunk", servers), &ring, |b, ring| {
            let mut i = 0u64;
            b.iter(|| {
                i = i.wrapping_add(1);
                black_box(ring.owner(PlacementKey::Chunk {
                    file_id: i >> 3,
                    index: i & 7,
                }))
            })
        });
        group.bench_with_input(BenchmarkId::new("metadata", servers), &ring, |b, ring| {
            let paths: Vec<String> = (0..1024).map(|i| format!("/job/rank{i}/file")).collect();
            let mut i = 0usize;
            b.iter(|| {
                i = (i + 1) & 1023;
                black_box(ring.owner(PlacementKey::Metadata(&paths[i])))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, lookup);
criterion_main!(benches);
