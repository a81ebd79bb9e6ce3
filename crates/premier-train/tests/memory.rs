//! The stage-1 memory estimate against the memory a step really takes on Flex (the fused
//! attention kernel, f32), on the medium configuration of the benchmarks at 256²: the whole
//! step's peak resident memory (`VmHWM`, reset with /proc/self/clear_refs) against the estimate's
//! total, and the extra peak of two more samples against the estimate's difference. The estimate
//! counts every tensor a block keeps; the allocator reuses some, so it may overestimate, but by
//! less than a factor of two. Gradient accumulation must not grow with the micro-batches. One
//! test in this binary: resident memory is the whole process's.

use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn::tensor::Distribution;
use premier_adapter::{AdapterConfig, PreferenceAdapter};
use premier_mmdit::{Flux, FluxConfig, FluxOps, PassShape};
use premier_train::memory::{host_peak_bytes, reset_host_peak, TrainingMemory};
use premier_train::stage1::{Stage1Batch, Stage1Config, Stage1Model, Stage1Trainer};
use premier_users::{UserShape, UserTable};

type AB = Autodiff<Flex>;

fn batch<B: FluxOps>(config: &FluxConfig, n: usize, side: usize, txt: usize) -> Stage1Batch<B> {
    let device = Default::default();
    let normal = Distribution::Normal(0.0, 1.0);
    Stage1Batch {
        x0: Tensor::random([n, side * side, config.in_channels], normal, &device),
        latent_hw: (2 * side, 2 * side),
        text: Tensor::random([n, txt, config.context_in_dim], normal, &device),
        pooled: Tensor::random([n, config.vec_in_dim], normal, &device),
        users: (0..n).collect(),
        null_text: Some(Tensor::random(
            [1, txt, config.context_in_dim],
            normal,
            &device,
        )),
    }
}

#[test]
fn estimate_bounds_measured_memory_and_accumulation_stays_flat() {
    if host_peak_bytes().is_none() || !reset_host_peak() {
        eprintln!("no /proc/self/status or clear_refs here: nothing to measure");
        return;
    }
    // The medium configuration of the shared benchmarks and its scaled adapters.
    let (config, adapter_config) = (FluxConfig::medium(), AdapterConfig::medium());
    let users = UserShape {
        users: 8,
        tokens: 30,
        dim: 128,
    };
    let (side, txt) = (16, 64); // 256² images: 256 image tokens.
    let device = Default::default();
    let flux = Flux::<AB>::init(&config, &device).unwrap();
    let model = Stage1Model {
        adapter: PreferenceAdapter::<AB>::init(&adapter_config, &device).unwrap(),
        users: UserTable::<AB>::init(users, &device),
    };
    let mut trainer = Stage1Trainer::new(flux, model, Stage1Config::default());
    let (small, large) = (1, 3);
    let step_peak = |trainer: &mut Stage1Trainer<AB>, n: usize| {
        let b = batch::<AB>(&config, n, side, txt);
        reset_host_peak();
        let before = host_peak_bytes().unwrap();
        trainer.step(&b).unwrap();
        (before, host_peak_bytes().unwrap())
    };
    step_peak(&mut trainer, small); // warm-up: the optimizer state, the allocator's pools
    let (_, peak_small) = step_peak(&mut trainer, small);
    let (_, peak_large) = step_peak(&mut trainer, large);
    let measured = peak_large.saturating_sub(peak_small) as f64 / (large - small) as f64;

    let estimate = |n: usize| {
        TrainingMemory::estimate(
            &config,
            4,
            &adapter_config,
            users,
            PassShape {
                batch: n,
                img_tokens: side * side,
                txt_tokens: txt,
                element_bytes: 4,
                fused_attention: <Flex as FluxOps>::FUSED_ATTENTION,
            },
        )
    };
    let estimated =
        (estimate(large).total() - estimate(small).total()) as f64 / (large - small) as f64;
    let ratio = measured / estimated;
    eprintln!(
        "per sample: measured {:.1} MiB, estimated {:.1} MiB (ratio {ratio:.2}); peaks {:.0} / {:.0} MiB; estimate at batch {large}: {}",
        measured / 1048576.0,
        estimated / 1048576.0,
        peak_small as f64 / 1048576.0,
        peak_large as f64 / 1048576.0,
        estimate(large)
    );
    assert!(
        (0.5..=1.1).contains(&ratio),
        "per sample: measured / estimated = {ratio:.2}"
    );
    // Gradient accumulation streams its micro-batches: past the running sum of the gradients,
    // 6 micro-batches peak like 2 (memory does not grow with their number).
    let micro = batch::<AB>(&config, small, side, txt);
    let mut accumulated_peak = |k: usize| {
        reset_host_peak();
        trainer
            .step_streamed(k, |_| {
                Ok::<_, premier_train::stage1::TrainError>(micro.clone())
            })
            .unwrap();
        host_peak_bytes().unwrap()
    };
    let (two, six) = (accumulated_peak(2), accumulated_peak(6));
    eprintln!(
        "accumulated micro-batches of {small}: 2 peak at {:.0} MiB, 6 at {:.0} MiB (one batch of {small}: {:.0} MiB)",
        two as f64 / 1048576.0,
        six as f64 / 1048576.0,
        peak_small as f64 / 1048576.0
    );
    assert!(
        six < two + (peak_large - peak_small) / 8,
        "accumulation grows memory with the micro-batches: 2 → {two}, 6 → {six} bytes"
    );
    let whole = peak_large as f64 / estimate(large).total() as f64;
    eprintln!("whole step at batch {large}: measured / estimated = {whole:.2}");
    assert!(
        (0.5..=1.1).contains(&whole),
        "whole step: measured / estimated = {whole:.2}"
    );
}
