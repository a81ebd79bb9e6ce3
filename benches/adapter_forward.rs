//! Premier's adapters (Δ_shared + Δ_distinct) at a scaled-down size next to one FLUX step of the
//! medium configuration, on Flex (CPU). Δ is computed once per (prompt, user); a FLUX step runs
//! for every sampling step.
//!
//! ```text
//! cargo bench --bench adapter_forward
//! ```

use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::Distribution;
use criterion::{criterion_group, Criterion};

use premier::adapter::{AdapterConfig, PreferenceAdapter};

fn adapter(c: &mut Criterion) {
    let device = Default::default();
    Flex::seed(&device, 0);
    let adapter = PreferenceAdapter::<Flex>::init(&AdapterConfig::medium(), &device).unwrap();
    let normal = Distribution::Normal(0.0, 1.0);
    let text = Tensor::<Flex, 3>::random([1, 64, 256], normal, &device);
    let user = Tensor::<Flex, 3>::random([1, 30, 128], normal, &device);
    let mut group = c.benchmark_group("adapter_scaled");
    group.sample_size(20);
    group.bench_function("delta_64_tokens", |b| {
        b.iter(|| {
            let d = adapter.forward(text.clone(), user.clone());
            (
                d.shared.unwrap().into_data(),
                d.distinct.unwrap().into_data(),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, adapter);
// criterion_main!, after the allocator setting the premier command and examples use.
fn main() {
    premier::allocator::retain_freed_memory();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
