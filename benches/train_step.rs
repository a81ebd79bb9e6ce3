//! One stage-1 training step (forward through the frozen medium FLUX, backward into the scaled
//! adapters and user table, Prodigy update), batch 2, on Flex (CPU): on one thread, and with the
//! batch's rows split over two (`Stage1Trainer::with_workers`).
//!
//! ```text
//! cargo bench --bench train_step
//! ```

use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn::tensor::Distribution;
use criterion::{criterion_group, Criterion};

use premier::adapter::{AdapterConfig, PreferenceAdapter};
use premier::mmdit::{Flux, FluxConfig};
use premier::train::stage1::{Stage1Batch, Stage1Config, Stage1Model, Stage1Trainer};
use premier::users::{UserShape, UserTable};

type AB = Autodiff<Flex>;

fn train_step(c: &mut Criterion) {
    let device = Default::default();
    <AB as Backend>::seed(&device, 0);
    let flux = Flux::<AB>::init(&FluxConfig::medium(), &device).unwrap();
    let adapter = PreferenceAdapter::<AB>::init(&AdapterConfig::medium(), &device).unwrap();
    let users = UserTable::<AB>::init(
        UserShape {
            users: 16,
            tokens: 30,
            dim: 128,
        },
        &device,
    );
    let normal = Distribution::Normal(0.0, 1.0);
    let batch = Stage1Batch {
        x0: Tensor::random([2, 1024, 64], normal, &device),
        latent_hw: (64, 64),
        text: Tensor::random([2, 64, 256], normal, &device),
        pooled: Tensor::random([2, 128], normal, &device),
        users: vec![3, 11],
        null_text: Some(Tensor::random([1, 64, 256], normal, &device)),
    };
    let model = Stage1Model { adapter, users };
    let mut group = c.benchmark_group("stage1_medium");
    group.sample_size(10);
    for workers in [1, 2] {
        let mut trainer = Stage1Trainer::new(flux.clone(), model.clone(), Stage1Config::default())
            .with_workers(workers);
        let name = format!("step_batch_2_workers_{workers}");
        group.bench_function(name, |b| b.iter(|| trainer.step(&batch).unwrap()));
    }
    group.finish();
}

criterion_group!(benches, train_step);
// criterion_main!, after the allocator setting the premier command and examples use.
fn main() {
    premier::allocator::retain_freed_memory();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
