//! FLUX forward on the shared medium configuration (docs/benchmarks.md), with and without Premier's
//! text modulation, on Flex (CPU).
//!
//! ```text
//! cargo bench --bench flux_forward
//! ```

use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::Distribution;
use criterion::{criterion_group, Criterion};

use premier::mmdit::{img_ids, txt_ids, Flux, FluxConfig, FluxInput, TextModulation};

fn forward(c: &mut Criterion) {
    let device = Default::default();
    Flex::seed(&device, 0);
    let config = FluxConfig::medium();
    let flux = Flux::<Flex>::init(&config, &device).unwrap();
    assert_eq!(flux.num_params(), 36_497_472);
    let normal = Distribution::Normal(0.0, 1.0);
    // 32 × 32 packed grid = 1024 image tokens (a 64 × 64 latent), 64 text tokens.
    let input = FluxInput {
        img: Tensor::<Flex, 3>::random([1, 1024, 64], normal, &device),
        img_ids: img_ids(1, 64, 64, &device),
        txt: Tensor::random([1, 64, 256], normal, &device),
        txt_ids: txt_ids(1, 64, &device),
        timesteps: Tensor::from_floats([0.7], &device),
        y: Tensor::random([1, 128], normal, &device),
        guidance: Some(Tensor::from_floats([3.5], &device)),
    };
    let delta = TextModulation::new(
        Tensor::random([1, 64, 512], normal, &device),
        Tensor::random([1, 64, 2, 512], normal, &device),
    );
    let run = |m: Option<&TextModulation<Flex>>| {
        let out = flux.forward(input.clone(), m);
        // Read back so the measured time includes all queued work.
        out.into_data()
    };
    run(None);

    let mut group = c.benchmark_group("flux_forward_medium");
    group.sample_size(10);
    group.bench_function("plain", |b| b.iter(|| run(None)));
    group.bench_function("modulated", |b| b.iter(|| run(Some(&delta))));
    group.finish();
}

/// The pieces that dominate a medium forward, at the sizes it runs them (1088 joint tokens).
fn parts(c: &mut Criterion) {
    use burn::tensor::module::attention;
    use burn::tensor::ops::AttentionModuleOptions;
    use premier::mmdit::embed::Rope;
    use premier::mmdit::fused::{composite::gelu_tanh, flux_gelu_tanh};

    let device = Default::default();
    let normal = Distribution::Normal(0.0, 1.0);
    let q = Tensor::<Flex, 4>::random([1, 8, 1088, 64], normal, &device);
    let k = Tensor::<Flex, 4>::random([1, 8, 1088, 64], normal, &device);
    let v = Tensor::<Flex, 4>::random([1, 8, 1088, 64], normal, &device);
    let x = Tensor::<Flex, 3>::random([1, 1088, 512], normal, &device);
    let mlp = Tensor::<Flex, 3>::random([1, 1088, 2048], normal, &device);
    let linear = burn::nn::LinearConfig::new(512, 2048).init::<Flex>(&device);
    let ids = Tensor::cat(
        vec![txt_ids::<Flex>(1, 64, &device), img_ids(1, 64, 64, &device)],
        1,
    );
    let rope = Rope::new(ids, &[8, 28, 28], 10_000);
    let norm_scale = Tensor::<Flex, 1>::random([64], normal, &device);

    let mut group = c.benchmark_group("flux_parts_medium");
    group.sample_size(20);
    group.bench_function("attention_8x1088x64", |b| {
        b.iter(|| {
            attention(
                q.clone(),
                k.clone(),
                v.clone(),
                None,
                None,
                AttentionModuleOptions::default(),
            )
            .into_data()
        })
    });
    // The same attention through `FluxOps` (Flex's fused kernel), heads merged as the model
    // needs them (the burn call above leaves them split).
    group.bench_function("fused_attention_8x1088x64", |b| {
        b.iter(|| {
            premier::mmdit::fused::flux_attention(q.clone(), k.clone(), v.clone()).into_data()
        })
    });
    group.bench_function("linear_512x2048_1088tok", |b| {
        b.iter(|| linear.forward(x.clone()).into_data())
    });
    // The same layer through `FluxOps::flux_linear` (one gemm into the bias rows).
    group.bench_function("fused_linear_512x2048_1088tok", |b| {
        b.iter(|| premier::mmdit::fused::flux_linear(&linear, x.clone()).into_data())
    });
    group.bench_function("gelu_tanh_1088x2048", |b| {
        b.iter(|| gelu_tanh(mlp.clone()).into_data())
    });
    group.bench_function("fused_gelu_tanh_1088x2048", |b| {
        b.iter(|| flux_gelu_tanh(mlp.clone()).into_data())
    });
    // QK-norm then RoPE: the composite (RMSNorm's and RoPE's tensor ops) against the one-pass
    // kernel of `FluxOps::flux_rms_norm_rope`.
    group.bench_function("rms_norm_rope_8x1088x64", |b| {
        use premier::mmdit::fused::composite;
        b.iter(|| {
            let out = composite::rms_norm_rope::<Flex>(
                q.clone().into_primitive().tensor(),
                norm_scale.clone().into_primitive().tensor(),
                rope.cos.clone().into_primitive().tensor(),
                rope.sin.clone().into_primitive().tensor(),
                1e-6,
            );
            Tensor::<Flex, 4>::from_primitive(burn::tensor::TensorPrimitive::Float(out)).into_data()
        })
    });
    group.bench_function("fused_rms_norm_rope_8x1088x64", |b| {
        b.iter(|| {
            premier::mmdit::fused::flux_rms_norm_rope(q.clone(), norm_scale.clone(), &rope, 1e-6)
                .into_data()
        })
    });
    group.finish();
}

/// One attention forward + backward under autodiff at the medium size: burn's differentiated
/// fallback (which keeps the [8, 1088, 1088] softmax) against `FluxOps`' fused node.
fn attention_training(c: &mut Criterion) {
    use burn::backend::Autodiff;
    use burn::tensor::module::attention;
    use burn::tensor::ops::AttentionModuleOptions;
    use premier::mmdit::fused::flux_attention;
    type AB = Autodiff<Flex>;

    let device = Default::default();
    let normal = Distribution::Normal(0.0, 1.0);
    let qkv: Vec<Tensor<Flex, 4>> = (0..3)
        .map(|_| Tensor::random([1, 8, 1088, 64], normal, &device))
        .collect();
    let w = Tensor::<Flex, 3>::random([1, 1088, 512], normal, &device);
    let step = |fused: bool| {
        let [q, k, v] =
            [0, 1, 2].map(|i| Tensor::<AB, 4>::from_inner(qkv[i].clone()).require_grad());
        let out = if fused {
            flux_attention(q.clone(), k.clone(), v.clone())
        } else {
            attention(
                q.clone(),
                k.clone(),
                v.clone(),
                None,
                None,
                AttentionModuleOptions::default(),
            )
            .swap_dims(1, 2)
            .reshape([1, 1088, 512])
        };
        let grads = (out * Tensor::from_inner(w.clone())).sum().backward();
        q.grad(&grads).unwrap().into_data()
    };
    let mut group = c.benchmark_group("flux_attention_train_medium");
    group.sample_size(10);
    group.bench_function("burn_fallback_fwd_bwd_8x1088x64", |b| {
        b.iter(|| step(false))
    });
    group.bench_function("fused_fwd_bwd_8x1088x64", |b| b.iter(|| step(true)));
    group.finish();
}

criterion_group!(benches, forward, parts, attention_training);
// criterion_main!, after the allocator setting the premier command and examples use.
fn main() {
    premier::allocator::retain_freed_memory();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
