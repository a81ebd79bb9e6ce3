//! Shared test helpers: fixture paths, reading reference tensors, comparing with a tolerance,
//! moving between tensors and the float primitives `FluxOps` takes.
#![allow(dead_code)]

use std::path::PathBuf;

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Distribution, TensorPrimitive};
use premier_io::SafetensorsFile;
use premier_mmdit::fused::{composite, flux_attention};
use premier_mmdit::{img_ids, txt_ids, FluxConfig, FluxInput, FluxOps};

pub type B = burn::backend::Flex;

/// `tests/fixtures/` at the workspace root (copied from the shared reference folder).
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

/// Reference tensors of one fixture file.
pub struct Fixture(SafetensorsFile);

impl Fixture {
    pub fn open(name: &str) -> Self {
        Self(SafetensorsFile::open(&fixture(name)).expect("fixture opens"))
    }

    pub fn tensor<const D: usize>(&self, key: &str) -> Tensor<B, D> {
        let host = self.0.read(key).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(host.shape.len(), D, "rank of fixture tensor {key}");
        Tensor::from_data(TensorData::new(host.data, host.shape), &Default::default())
    }
}

/// Max |a - b| over all elements, after checking the shapes agree.
pub fn max_abs_diff<const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let a = a.into_data().to_vec::<f32>().unwrap();
    let b = b.into_data().to_vec::<f32>().unwrap();
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Panics with the observed difference if it exceeds `atol`.
pub fn assert_close<const D: usize>(what: &str, got: Tensor<B, D>, want: Tensor<B, D>, atol: f32) {
    let diff = max_abs_diff(got, want);
    assert!(
        diff <= atol,
        "{what}: max |diff| = {diff:e} > atol {atol:e}"
    );
    eprintln!("{what}: max |diff| = {diff:e} (atol {atol:e})");
}

/// A small FLUX for property and gradient tests: width 32, 16 input channels, text 20, pooled 24.
pub fn small_config() -> FluxConfig {
    FluxConfig {
        in_channels: 16,
        out_channels: 16,
        vec_in_dim: 24,
        context_in_dim: 20,
        hidden_size: 32,
        axes_dim: vec![4, 6, 6],
        ..FluxConfig::tiny()
    }
}

/// Text tokens of [`random_input`].
pub const TXT: usize = 5;

/// A random batch for `config`: 4×6 latent (6 image tokens), [`TXT`] text tokens, t = 0.4,
/// guidance 3.5.
pub fn random_input<Bk: Backend>(
    config: &FluxConfig,
    batch: usize,
    device: &Bk::Device,
) -> FluxInput<Bk> {
    let normal = Distribution::Normal(0.0, 1.0);
    let (h, w) = (4, 6);
    FluxInput {
        img: Tensor::random(
            [batch, (h / 2) * (w / 2), config.in_channels],
            normal,
            device,
        ),
        img_ids: img_ids(batch, h, w, device),
        txt: Tensor::random([batch, TXT, config.context_in_dim], normal, device),
        txt_ids: txt_ids(batch, TXT, device),
        timesteps: Tensor::full([batch], 0.4, device),
        y: Tensor::random([batch, config.vec_in_dim], normal, device),
        guidance: Some(Tensor::full([batch], 3.5, device)),
    }
}

/// A tensor's float primitive (for calling `FluxOps` methods directly).
pub fn prim<Bk: Backend, const D: usize>(x: Tensor<Bk, D>) -> FloatTensor<Bk> {
    x.into_primitive().tensor()
}

/// A float primitive as a tensor.
pub fn tensor<Bk: Backend, const D: usize>(x: FloatTensor<Bk>) -> Tensor<Bk, D> {
    Tensor::from_primitive(TensorPrimitive::Float(x))
}

/// The elements as f64, whatever the float type.
pub fn values<Bk: Backend, const D: usize>(x: Tensor<Bk, D>) -> Vec<f64> {
    x.cast(DType::F64).into_data().to_vec::<f64>().unwrap()
}

/// max |a − b| / max |b|.
pub fn rel(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    let scale = b.iter().map(|y| y.abs()).fold(0.0, f64::max);
    diff / scale.max(f64::MIN_POSITIVE)
}

/// Normal draws of `shape`, the same for a seed on every call, cast to `dtype`. Drawn on the host
/// from a generator of its own rather than with `B::seed` + `random`: Flex's generator is one for
/// the process, so tests running beside each other would interleave their draws, and a
/// comparison could run on other data than the one it was checked with.
pub fn random<B2: Backend, const D: usize>(
    shape: [usize; D],
    dtype: DType,
    seed: u64,
) -> Tensor<B2, D> {
    use rand::SeedableRng;
    use rand_distr::Distribution as _;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n = shape.iter().product();
    let values: Vec<f64> = (0..n)
        .map(|_| rand_distr::StandardNormal.sample(&mut rng))
        .collect();
    Tensor::<B2, D>::from_data(TensorData::new(values, shape), &Default::default()).cast(dtype)
}

/// Central finite differences (step 1e-5) of `loss_at` against the analytic gradients `grads` of
/// the three attention inputs `inputs` (f64), along a random direction in each input alone, then
/// in all three together: relative error at most 1e-6.
pub fn assert_attention_gradients_match_finite_differences<Bk: Backend>(
    inputs: &[Tensor<Bk, 4>; 3],
    grads: &[Option<Vec<f64>>; 3],
    loss_at: impl Fn([Tensor<Bk, 4>; 3]) -> f64,
) {
    let h = 1e-5;
    let shape = inputs[0].dims();
    for moved in [
        [true, false, false],
        [false, true, false],
        [false, false, true],
        [true; 3],
    ] {
        let directions: Vec<Tensor<Bk, 4>> = (0..3)
            .map(|i| random::<Bk, 4>(shape, DType::F64, 50 + i as u64))
            .collect();
        let step = |sign: f64| -> [Tensor<Bk, 4>; 3] {
            [0, 1, 2].map(|i| {
                if moved[i] {
                    inputs[i].clone() + directions[i].clone() * (sign * h)
                } else {
                    inputs[i].clone()
                }
            })
        };
        let numeric = (loss_at(step(1.0)) - loss_at(step(-1.0))) / (2.0 * h);
        let analytic: f64 = (0..3)
            .filter(|&i| moved[i])
            .map(|i| {
                let g = grads[i].as_ref().expect("a gradient for every moved input");
                g.iter()
                    .zip(values(directions[i].clone()))
                    .map(|(a, b)| a * b)
                    .sum::<f64>()
            })
            .sum();
        let r = (numeric - analytic).abs() / analytic.abs().max(1e-12);
        assert!(
            r <= 1e-6,
            "{shape:?} {moved:?}: numeric {numeric} analytic {analytic} rel {r:e}"
        );
    }
}

/// Attention inputs q, k, v of `shape` `[B, H, T, D]`, drawn from `seed`.
pub fn attention_qkv<Bk: Backend>(
    shape: [usize; 4],
    dtype: DType,
    seed: u64,
) -> [Tensor<Bk, 4>; 3] {
    [0, 1, 2].map(|i| random::<Bk, 4>(shape, dtype, seed * 3 + i))
}

/// Loss weights `[B, T, H·D]` for attention inputs of `shape`.
pub fn attention_weights<Bk: Backend>(shape: [usize; 4], dtype: DType) -> Tensor<Bk, 3> {
    let [b, h, n, d] = shape;
    random::<Bk, 4>([b, n, h, d], dtype, 7).reshape([b, n, h * d])
}

/// attention(q, k, v) with scale 1/√D, through `FluxOps` (`node`: the kernel or the one-node
/// composite) or burn's differentiated attention.
pub fn attention_through<Bk: FluxOps>(
    q: Tensor<Bk, 4>,
    k: Tensor<Bk, 4>,
    v: Tensor<Bk, 4>,
    node: bool,
) -> Tensor<Bk, 3> {
    if node {
        flux_attention(q, k, v)
    } else {
        let scale = 1.0 / (q.dims()[3] as f64).sqrt();
        tensor::<Bk, 3>(composite::attention::<Bk>(prim(q), prim(k), prim(v), scale))
    }
}

/// L = Σ attention(q, k, v) ∘ w ([`attention_through`]), and the gradients of the tracked inputs.
pub fn attention_loss_and_grads<A: AutodiffBackend + FluxOps>(
    [q, k, v]: [Tensor<A::InnerBackend, 4>; 3],
    w: Tensor<A::InnerBackend, 3>,
    tracked: [bool; 3],
    node: bool,
) -> (f64, [Option<Vec<f64>>; 3]) {
    let track = |x: Tensor<A::InnerBackend, 4>, t: bool| {
        let x = Tensor::<A, 4>::from_inner(x);
        if t {
            x.require_grad()
        } else {
            x
        }
    };
    let (q, k, v) = (
        track(q, tracked[0]),
        track(k, tracked[1]),
        track(v, tracked[2]),
    );
    let out = attention_through(q.clone(), k.clone(), v.clone(), node);
    let loss = (out * Tensor::from_inner(w)).sum();
    let value = values(loss.clone().inner())[0];
    let grads = loss.backward();
    let grad = |x: &Tensor<A, 4>| x.grad(&grads).map(values);
    (value, [grad(&q), grad(&k), grad(&v)])
}
