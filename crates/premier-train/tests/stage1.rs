//! Stage 1 on tiny sizes: the trained parameters move, the loss on a fixed batch goes down, the
//! backbone stays bitwise unchanged, and dispersion pushes users' Δ apart.

use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn::tensor::Distribution;
use premier_adapter::{AdapterConfig, PreferenceAdapter};
use premier_mmdit::{Flux, FluxConfig};
use premier_train::params::{assign_flat, flat_values};
use premier_train::prodigy::ProdigyConfig;
use premier_train::stage1::{
    step_noise, Stage1Batch, Stage1Config, Stage1Model, Stage1Trainer, TrainError,
};
use premier_users::{UserShape, UserTable};

type AB = Autodiff<Flex>;

fn flux_config() -> FluxConfig {
    FluxConfig::tiny()
}

struct Setup {
    flux: Flux<AB>,
    model: Stage1Model<AB>,
    batch: Stage1Batch<AB>,
    noise: Tensor<AB, 3>,
    t: Tensor<AB, 1>,
}

/// Held while a setup draws: burn's seed is one RNG for the process and tests run on parallel
/// threads, so without it one test's draws could interleave with another's and the setups differ.
static SEEDED_DRAWS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn setup() -> Setup {
    let _draws = SEEDED_DRAWS.lock().unwrap_or_else(|e| e.into_inner());
    let device = Default::default();
    <AB as Backend>::seed(&device, 17);
    let normal = Distribution::Normal(0.0, 1.0);
    let flux = Flux::<AB>::init(&flux_config(), &device).unwrap();
    let adapter =
        PreferenceAdapter::<AB>::init(&AdapterConfig::small(16, 6, 16, 2), &device).unwrap();
    let users = UserTable::<AB>::init(
        UserShape {
            users: 4,
            tokens: 3,
            dim: 6,
        },
        &device,
    );
    let batch = Stage1Batch {
        x0: Tensor::random([4, 4, 8], normal, &device),
        latent_hw: (4, 4),
        text: Tensor::random([4, 5, 16], normal, &device),
        pooled: Tensor::random([4, 12], normal, &device),
        users: vec![0, 1, 2, 3],
        null_text: Some(Tensor::random([1, 5, 16], normal, &device)),
    };
    Setup {
        flux,
        model: Stage1Model { adapter, users },
        batch,
        noise: Tensor::random([4, 4, 8], normal, &device),
        t: Tensor::from_floats([0.2, 0.4, 0.6, 0.8], &device),
    }
}

fn config(dispersion: bool) -> Stage1Config {
    Stage1Config {
        dispersion: dispersion.then_some(premier_losses::DispersionVariant::Stable),
        // A larger starting step than the released 1e-6, so a few dozen steps show progress.
        optimizer: ProdigyConfig {
            d0: 1e-3,
            ..ProdigyConfig::premier()
        },
        ..Stage1Config::default()
    }
}

fn bits(values: Vec<Tensor<AB, 1>>) -> Vec<u32> {
    values
        .into_iter()
        .flat_map(|t| t.into_data().to_vec::<f32>().unwrap())
        .map(f32::to_bits)
        .collect()
}

#[test]
fn parameters_round_trip_through_flat_vectors() {
    let s = setup();
    let values = flat_values(&s.model);
    let total: usize = values.iter().map(|v| v.dims()[0]).sum();
    assert_eq!(total, s.model.num_params());
    let doubled: Vec<_> = values.iter().map(|v| v.clone() * 2.0).collect();
    let model = assign_flat(s.model.clone(), doubled.clone());
    assert_eq!(bits(flat_values(&model)), bits(doubled));
    assert_eq!(
        model.users.weight.id, s.model.users.weight.id,
        "parameter ids are kept"
    );
}

#[test]
fn fits_a_fixed_batch_and_leaves_the_backbone_unchanged() {
    let s = setup();
    let backbone = bits(flat_values(&s.flux));
    let mut trainer = Stage1Trainer::new(s.flux, s.model, config(true));
    let mut reports = Vec::new();
    for _ in 0..40 {
        reports.push(
            trainer
                .step_with(&s.batch, s.noise.clone(), s.t.clone())
                .unwrap(),
        );
    }
    let (first, last) = (reports[0], reports[39]);
    eprintln!(
        "loss {:.6} -> {:.6}, flow {:.6} -> {:.6}, d {:e}",
        first.loss, last.loss, first.flow, last.flow, last.d
    );
    assert!(reports
        .iter()
        .all(|r| r.loss.is_finite() && r.grad_norm.is_finite()));
    assert!(
        last.flow < first.flow,
        "flow loss did not go down: {} -> {}",
        first.flow,
        last.flow
    );
    assert!(
        last.loss < first.loss,
        "loss did not go down: {} -> {}",
        first.loss,
        last.loss
    );
    assert!(last.d > 1e-3, "Prodigy's d grew: {}", last.d);
    assert_eq!(
        bits(flat_values(&trainer.flux)),
        backbone,
        "the frozen backbone changed"
    );
}

/// Mean pairwise L2 distance between the users' null-prompt Δ_shared.
fn spread(trainer: &Stage1Trainer<AB>, batch: &Stage1Batch<AB>) -> f64 {
    let users = trainer.model.users.lookup(&[0, 1, 2, 3]).unwrap();
    let delta = trainer
        .model
        .adapter
        .forward(batch.null_text.clone().unwrap().repeat_dim(0, 4), users);
    let z: Vec<f32> = delta
        .shared
        .unwrap()
        .reshape([4, -1])
        .into_data()
        .to_vec()
        .unwrap();
    let width = z.len() / 4;
    let mut total = 0.0;
    for i in 0..4 {
        for j in (i + 1)..4 {
            total += (0..width)
                .map(|k| ((z[i * width + k] - z[j * width + k]) as f64).powi(2))
                .sum::<f64>()
                .sqrt();
        }
    }
    total / 6.0
}

#[test]
fn dispersion_pushes_users_apart() {
    let s = setup();
    let mut with = Stage1Trainer::new(s.flux.clone(), s.model.clone(), config(true));
    let mut without = Stage1Trainer::new(s.flux, s.model, config(false));
    let start = spread(&with, &s.batch);
    for _ in 0..30 {
        with.step_with(&s.batch, s.noise.clone(), s.t.clone())
            .unwrap();
        without
            .step_with(&s.batch, s.noise.clone(), s.t.clone())
            .unwrap();
    }
    let (a, b) = (spread(&with, &s.batch), spread(&without, &s.batch));
    eprintln!("mean pairwise ‖Δ_shared‖: start {start:.6}, with dispersion {a:.6}, without {b:.6}");
    assert!(a > b, "dispersion should spread users: {a} vs {b}");
}

#[test]
fn accumulating_two_halves_equals_one_full_batch() {
    let s = setup();
    let (first, second) = (s.batch.rows(0..2), s.batch.rows(2..4));
    // Flow loss only: dispersion contrasts the users inside each micro-batch, by design.
    let mut full = Stage1Trainer::new(s.flux.clone(), s.model.clone(), config(false));
    let mut accumulated = Stage1Trainer::new(s.flux, s.model, config(false));
    for _ in 0..3 {
        let a = full
            .step_with(&s.batch, s.noise.clone(), s.t.clone())
            .unwrap();
        let b = accumulated
            .step_accumulated_with(vec![
                (&first, s.noise.clone().slice(0..2), s.t.clone().slice(0..2)),
                (
                    &second,
                    s.noise.clone().slice(2..4),
                    s.t.clone().slice(2..4),
                ),
            ])
            .unwrap();
        assert!(
            (a.loss - b.loss).abs() <= 1e-6 * a.loss.abs(),
            "{a:?} {b:?}"
        );
        assert!(
            (a.grad_norm - b.grad_norm).abs() <= 1e-5 * a.grad_norm,
            "{a:?} {b:?}"
        );
    }
    assert_same_parameters(&full.model, &accumulated.model);
}

#[test]
fn streamed_micro_batches_are_the_accumulated_step_bit_for_bit() {
    let s = setup();
    let rows: Vec<Stage1Batch<AB>> = (0..4).map(|i| s.batch.rows(i..i + 1)).collect();
    let mut accumulated = Stage1Trainer::new(s.flux.clone(), s.model.clone(), config(true));
    let mut streamed = Stage1Trainer::new(s.flux, s.model, config(true));
    for _ in 0..2 {
        // The reference: all micro-batches and their noise made up front (micro-batch i draws
        // the noise of (seed + i, step)), then accumulated.
        let with_noise = rows
            .iter()
            .enumerate()
            .map(|(i, row)| {
                let (noise, t) = step_noise::<AB>(
                    accumulated.config.seed + i as u64,
                    accumulated.step,
                    &accumulated.config.timesteps,
                    row.x0.dims(),
                    &row.x0.device(),
                );
                (row, noise, t)
            })
            .collect();
        let a = accumulated.step_accumulated_with(with_noise).unwrap();
        let mut asked = Vec::new();
        let b = streamed
            .step_streamed(rows.len(), |i| {
                asked.push(i);
                Ok::<_, TrainError>(rows[i].clone())
            })
            .unwrap();
        assert_eq!(asked, vec![0, 1, 2, 3]);
        assert_eq!(a, b);
    }
    assert_eq!(
        bits(flat_values(&accumulated.model)),
        bits(flat_values(&streamed.model))
    );
    // A micro-batch that cannot be made stops the step before it changes anything.
    let before = bits(flat_values(&streamed.model));
    let err = streamed
        .step_streamed(4, |i| match i {
            2 => Err(TrainError::Batch("micro-batch 2 is unreadable".into())),
            _ => Ok(rows[i].clone()),
        })
        .unwrap_err();
    assert!(err.to_string().contains("micro-batch 2"), "{err}");
    assert_eq!(streamed.step, 2);
    assert_eq!(bits(flat_values(&streamed.model)), before);
}

/// Every parameter of `a` and `b` agrees to 1e-5 of its largest magnitude (f32 sums in another
/// order).
fn assert_same_parameters(a: &Stage1Model<AB>, b: &Stage1Model<AB>) {
    for (x, y) in flat_values(a).into_iter().zip(flat_values(b)) {
        let diff: f32 = (x.clone() - y).abs().max().into_scalar();
        let scale: f32 = x.abs().max().into_scalar();
        assert!(
            diff <= 1e-5 * scale.max(1e-3),
            "max diff {diff} (scale {scale})"
        );
    }
}

#[test]
fn splitting_the_rows_over_threads_is_the_same_step() {
    use premier_losses::DispersionVariant;
    use premier_train::stage1::{step_noise, DispersionPrompt};
    let s = setup();
    let cases = [
        (None, DispersionPrompt::Null, 2),
        (Some(DispersionVariant::Hinge), DispersionPrompt::Null, 2),
        (Some(DispersionVariant::Stable), DispersionPrompt::Batch, 3),
    ];
    let close = |x: f64, y: f64| (x - y).abs() <= 1e-5 * x.abs().max(1e-6);
    for (dispersion, prompt, workers) in cases {
        let config = Stage1Config {
            dispersion,
            dispersion_prompt: prompt,
            ..config(true)
        };
        let case = format!("{workers} workers, {dispersion:?}");
        // The gradients handed to the optimizer, at three points along one trajectory. (The
        // parameters after a step are not compared: Prodigy divides by √v + ε, so a gradient
        // that is zero up to rounding moves its parameter by up to d·|g|/ε either way.)
        let mut trainer = Stage1Trainer::new(s.flux.clone(), s.model.clone(), config.clone());
        for _ in 0..3 {
            let (noise, t) = step_noise(
                config.seed,
                trainer.step,
                &config.timesteps,
                s.batch.x0.dims(),
                &s.batch.x0.device(),
            );
            let mut of = |workers: usize| {
                trainer.workers = workers;
                trainer
                    .gradients_accumulated_with(vec![(&s.batch, noise.clone(), t.clone())])
                    .unwrap()
            };
            let (serial, split) = (of(1), of(workers));
            for (name, x, y) in ["total", "flow", "shared", "distinct"]
                .into_iter()
                .zip(serial.parts)
                .zip(split.parts)
                .map(|((n, x), y)| (n, x, y))
                .chain([("delta_to_y", serial.delta_to_y, split.delta_to_y)])
            {
                assert!(close(x, y), "{case}: {name} {x} vs {y}");
            }
            let active = serial.parts[2].abs() + serial.parts[3].abs() > 0.0;
            assert_eq!(active, dispersion.is_some(), "{case}: {:?}", serial.parts);
            assert_eq!(serial.grads.len(), split.grads.len());
            for (i, (g, h)) in serial.grads.into_iter().zip(split.grads).enumerate() {
                let diff: f32 = (g.clone() - h).abs().max().into_scalar();
                let scale: f32 = g.abs().max().into_scalar();
                assert!(
                    diff <= 1e-5 * scale,
                    "{case}: gradient {i} differs by {diff} at scale {scale}"
                );
            }
            trainer.workers = 1;
            trainer.step(&s.batch).unwrap();
        }
        // And the step itself: the same report from a trainer built with the workers.
        let mut serial = Stage1Trainer::new(s.flux.clone(), s.model.clone(), config.clone());
        let mut split =
            Stage1Trainer::new(s.flux.clone(), s.model.clone(), config).with_workers(workers);
        let (a, b) = (
            serial.step(&s.batch).unwrap(),
            split.step(&s.batch).unwrap(),
        );
        for (name, x, y) in [
            ("loss", a.loss, b.loss),
            ("grad_norm", a.grad_norm, b.grad_norm),
            ("delta_to_y", a.delta_to_y, b.delta_to_y),
            ("d", a.d, b.d),
        ] {
            assert!(close(x, y), "{case}: step report {name} {x} vs {y}");
        }
    }
}

/// RMS(Δ)/RMS(y) after `steps` steps of `config` on the fixed batch, and its largest value.
fn delta_to_y_after(config: Stage1Config, steps: usize) -> (f64, f64) {
    let s = setup();
    let mut trainer = Stage1Trainer::new(s.flux, s.model, config);
    let mut largest: f64 = 0.0;
    let mut last = f64::NAN;
    for _ in 0..steps {
        let report = trainer
            .step_with(&s.batch, s.noise.clone(), s.t.clone())
            .unwrap();
        assert!(report.delta_to_y.is_finite(), "{report:?}");
        largest = largest.max(report.delta_to_y);
        last = report.delta_to_y;
    }
    (last, largest)
}

#[test]
fn the_default_dispersion_keeps_delta_bounded_where_the_paper_l2_runs_away() {
    // On this random problem the flow loss alone already drives Δ far past the tiny y of a
    // random backbone; the question is what the dispersion adds on top of it.
    let steps = 300;
    let with = |dispersion| Stage1Config {
        dispersion: Some(dispersion),
        ..config(true)
    };
    let default = Stage1Config::default().dispersion.unwrap();
    let (bounded_last, bounded_max) = delta_to_y_after(with(default), steps);
    let (paper_last, _) = delta_to_y_after(with(premier_losses::DispersionVariant::Stable), steps);
    let (flow_last, flow_max) = delta_to_y_after(config(false), steps);
    eprintln!(
        "RMS(Δ)/RMS(y) after {steps} steps: flow loss only {flow_last:.2} (max {flow_max:.2}), \
         default {default:?} {bounded_last:.2} (max {bounded_max:.2}), paper L2 {paper_last:.2}"
    );
    assert!(
        bounded_max <= 1.1 * flow_max,
        "the default dispersion grew Δ beyond what the flow loss asks: {bounded_max} vs {flow_max}"
    );
    assert!(
        paper_last > 10.0 * flow_last,
        "the paper's L2 was expected to run away: {paper_last} vs {flow_last}"
    );
}

#[test]
fn a_cosine_tail_follows_the_constant_run_then_stops_moving_at_its_end() {
    use premier_train::schedule::StepDecay;
    // One draw for both runs: the backend's seed is global, and other tests draw concurrently.
    let s = setup();
    let run = |decay: StepDecay, steps: usize| {
        let config = Stage1Config {
            lr_schedule: decay.schedule(4),
            ..config(false)
        };
        let mut trainer = Stage1Trainer::new(s.flux.clone(), s.model.clone(), config);
        let mut after = Vec::new();
        for _ in 0..steps {
            trainer
                .step_with(&s.batch, s.noise.clone(), s.t.clone())
                .unwrap();
            after.push(bits(flat_values(&trainer.model)));
        }
        after
    };
    let constant = run(StepDecay::None, 6);
    let tail = run(StepDecay::CosineTail(2), 6);
    // Steps 1–3 take the full step (the tail's cosine starts at 1): the constant run, bit for
    // bit. Step 4 takes half a step; steps 5 and 6 are past the schedule's end (factor 0).
    assert!(
        tail[..3] == constant[..3],
        "the steps before the decay differ"
    );
    assert!(tail[3] != constant[3], "the half step equals the full one");
    assert!(tail[3] != tail[2], "the tail's last step moved nothing");
    assert!(
        tail[4] == tail[3],
        "a step past the schedule's end moved the parameters"
    );
    assert!(
        tail[5] == tail[3],
        "a step past the schedule's end moved the parameters"
    );
}

#[test]
fn a_non_finite_loss_stops_the_step_before_it_changes_anything() {
    let s = setup();
    let mut trainer = Stage1Trainer::new(s.flux, s.model, config(true));
    trainer
        .step_with(&s.batch, s.noise.clone(), s.t.clone())
        .unwrap();
    let before = bits(flat_values(&trainer.model));
    let (step, d) = (trainer.step, trainer.optimizer.d());
    // One NaN pixel in the batch makes the loss NaN.
    let mut poisoned = s.batch.clone();
    let mut x0 = poisoned.x0.into_data().to_vec::<f32>().unwrap();
    x0[5] = f32::NAN;
    poisoned.x0 = Tensor::from_data(TensorData::new(x0, [4, 4, 8]), &Default::default());
    let err = trainer
        .step_with(&poisoned, s.noise.clone(), s.t.clone())
        .unwrap_err();
    match &err {
        premier_train::stage1::TrainError::NonFinite {
            step: 2,
            quantity,
            value,
        } => {
            assert_eq!(*quantity, "loss");
            assert!(value.is_nan());
        }
        other => panic!("expected NonFinite at step 2, got {other}"),
    }
    assert!(
        err.to_string().starts_with("step 2: the loss is NaN"),
        "{err}"
    );
    assert_unchanged(&trainer, (step, d, &before));
    // The trainer goes on from where it was.
    trainer
        .step_with(&s.batch, s.noise.clone(), s.t.clone())
        .unwrap();
}

#[test]
fn a_non_finite_gradient_stops_the_step_before_it_changes_anything() {
    let s = setup();
    let mut trainer = Stage1Trainer::new(s.flux, s.model, config(true));
    trainer
        .step_with(&s.batch, s.noise.clone(), s.t.clone())
        .unwrap();
    let before = bits(flat_values(&trainer.model));
    let (step, d) = (trainer.step, trainer.optimizer.d());
    let mut gradients = trainer
        .gradients_accumulated_with(vec![(&s.batch, s.noise.clone(), s.t.clone())])
        .unwrap();
    assert!(gradients.parts[0].is_finite(), "the loss itself is finite");
    // One infinite element in one parameter's gradient.
    let first = gradients.grads[0].clone();
    let mut values = first.clone().into_data().to_vec::<f32>().unwrap();
    values[0] = f32::INFINITY;
    gradients.grads[0] = Tensor::from_data(TensorData::new(values, first.dims()), &first.device());
    let err = trainer.apply_gradients(gradients).unwrap_err();
    assert!(
        err.to_string().starts_with("step 2: the gradient norm is"),
        "{err}"
    );
    assert_unchanged(&trainer, (step, d, &before));
}

/// The step counter, Prodigy's d and every parameter are still `(step, d, bits)`.
fn assert_unchanged(trainer: &Stage1Trainer<AB>, (step, d, before): (u64, f64, &[u32])) {
    assert_eq!(trainer.step, step, "the step counter moved");
    assert_eq!(trainer.optimizer.d(), d, "the optimizer moved");
    assert_eq!(
        bits(flat_values(&trainer.model)),
        before,
        "parameters moved"
    );
}
