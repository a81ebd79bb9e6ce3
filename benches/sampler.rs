//! The cost of personalization in sampling, on the medium configuration (CPU, Flex): a 4-step
//! Euler run without Δ, with a precomputed Δ (what premier does: Δ once per (prompt, user)), and
//! with the adapter re-run at every step (what the official code does).
//!
//! ```text
//! cargo bench --bench sampler
//! ```

use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::Distribution;
use criterion::{criterion_group, Criterion};

use premier::adapter::{AdapterConfig, PreferenceAdapter};
use premier::mmdit::{img_ids, txt_ids, Flux, FluxConfig};
use premier::pipeline::{denoise, schedule};

fn sampling(c: &mut Criterion) {
    let device = Default::default();
    Flex::seed(&device, 0);
    let config = FluxConfig::medium();
    let flux = Flux::<Flex>::init(&config, &device).unwrap();
    let adapter_config = AdapterConfig::medium();
    let adapter = PreferenceAdapter::<Flex>::init(&adapter_config, &device).unwrap();
    let normal = Distribution::Normal(0.0, 1.0);
    let img = Tensor::<Flex, 3>::random([1, 1024, 64], normal, &device);
    let txt = Tensor::<Flex, 3>::random([1, 64, 256], normal, &device);
    let user = Tensor::<Flex, 3>::random([1, 30, 128], normal, &device);
    let y = Tensor::<Flex, 2>::random([1, 128], normal, &device);
    let steps = 4;
    let timesteps = schedule(steps, 1024, true);
    let run = |delta: Option<&premier::mmdit::TextModulation<Flex>>| {
        denoise(
            &flux,
            img.clone(),
            img_ids(1, 64, 64, &device),
            txt.clone(),
            txt_ids(1, 64, &device),
            y.clone(),
            Some(Tensor::from_floats([3.5], &device)),
            &timesteps,
            delta,
            &mut (),
        )
        .unwrap()
        .into_data()
    };

    let mut group = c.benchmark_group("sampler_medium_4_steps");
    group.sample_size(10);
    group.bench_function("plain", |b| b.iter(|| run(None)));
    group.bench_function("premier_delta_once", |b| {
        b.iter(|| {
            let delta = adapter.forward(txt.clone(), user.clone());
            run(Some(&delta))
        })
    });
    group.bench_function("delta_every_step", |b| {
        b.iter(|| {
            let mut out = img.clone();
            for pair in timesteps.windows(2) {
                let delta = adapter.forward(txt.clone(), user.clone());
                out = denoise(
                    &flux,
                    out,
                    img_ids(1, 64, 64, &device),
                    txt.clone(),
                    txt_ids(1, 64, &device),
                    y.clone(),
                    Some(Tensor::from_floats([3.5], &device)),
                    pair,
                    Some(&delta),
                    &mut (),
                )
                .unwrap();
            }
            out.into_data()
        })
    });
    group.finish();
}

criterion_group!(benches, sampling);
// criterion_main!, after the allocator setting the premier command and examples use.
fn main() {
    premier::allocator::retain_freed_memory();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
