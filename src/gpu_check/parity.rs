//! Every reference fixture of the test suite (tests/fixtures, README there) on one backend: each
//! comparison's max |diff|, relative L2 error and the tolerance the crate tests use. The crate
//! tests assert on the CPU; this runs the same comparisons anywhere and reports them, so a GPU's
//! numbers can be read beside the tolerance (cubecl may run f32 matmuls in TF32).

use std::path::{Path, PathBuf};

use burn::backend::Autodiff;
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use premier_adapter::{AdapterConfig, PreferenceAdapter};
use premier_io::SafetensorsFile;
use premier_losses::{dispersion_loss, flow_matching_loss, DispersionVariant};
use premier_mmdit::{Flux, FluxConfig, FluxInput, FluxOps, TextModulation};
use premier_pipeline::denoise;
use premier_text::{ClipTextConfig, ClipTextEncoder, T5Config, T5Encoder};
use premier_train::prodigy::{Prodigy, ProdigyConfig};
use premier_vae::{scale_latent, unscale_latent, Autoencoder, AutoencoderConfig};

/// How a comparison is judged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Tolerance {
    /// max |got − want| ≤ atol.
    Abs(f64),
    /// max |got − want| / max |want| ≤ rtol.
    Rel(f64),
}

/// One comparison of a fixture.
#[derive(Debug, Clone, PartialEq)]
pub struct ParityRow {
    /// The fixture file's name.
    pub fixture: &'static str,
    /// What was compared (an output or a gradient).
    pub quantity: String,
    /// max |got − want|.
    pub max_abs: f64,
    /// ‖got − want‖₂ / ‖want‖₂.
    pub rel_l2: f64,
    /// max |want|.
    pub scale: f64,
    /// What the comparison must meet.
    pub tolerance: Tolerance,
}

impl ParityRow {
    fn new(
        fixture: &'static str,
        quantity: &str,
        got: &[f64],
        want: &[f64],
        tol: Tolerance,
    ) -> Self {
        let (mut max_abs, mut diff2, mut ref2, mut scale) = (0f64, 0f64, 0f64, 0f64);
        let same_len = got.len() == want.len();
        for (g, w) in got.iter().zip(want) {
            let d = (g - w).abs();
            // NaN never passes: max() would drop it.
            max_abs = if d.is_nan() || max_abs.is_nan() {
                f64::NAN
            } else {
                max_abs.max(d)
            };
            diff2 += d * d;
            ref2 += w * w;
            scale = scale.max(w.abs());
        }
        if !same_len {
            max_abs = f64::INFINITY;
        }
        Self {
            fixture,
            quantity: quantity.to_string(),
            max_abs,
            rel_l2: diff2.sqrt() / ref2.sqrt().max(f64::MIN_POSITIVE),
            scale,
            tolerance: tol,
        }
    }

    /// Within the crate tests' tolerance.
    pub fn passes(&self) -> bool {
        match self.tolerance {
            Tolerance::Abs(atol) => self.max_abs <= atol,
            Tolerance::Rel(rtol) => self.max_abs <= rtol * self.scale,
        }
    }
}

/// A fixture that could not be run (a missing file or key, a shape mismatch).
#[derive(Debug, Clone, PartialEq)]
pub struct ParityFailure {
    /// The fixture file's name.
    pub fixture: &'static str,
    /// What went wrong.
    pub error: String,
}

fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f64> {
    t.into_data()
        .convert::<f64>()
        .into_vec::<f64>()
        .expect("converted to f64")
}

/// Fixture files of one folder, read onto one device.
struct Fixtures<'a, B: Backend> {
    dir: &'a Path,
    device: &'a B::Device,
}

type Res<T> = Result<T, String>;

impl<B: Backend> Fixtures<'_, B> {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn open(&self, name: &str) -> Res<SafetensorsFile> {
        SafetensorsFile::open(&self.path(name)).map_err(|e| e.to_string())
    }

    fn json(&self, name: &str) -> Res<serde_json::Value> {
        let path = self.path(name);
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    fn tensor<const D: usize>(&self, f: &SafetensorsFile, key: &str) -> Res<Tensor<B, D>> {
        let host = f.read(key).map_err(|e| e.to_string())?;
        // Scalars are stored 0-d; burn's smallest rank is 1.
        let shape = if host.shape.is_empty() {
            vec![1]
        } else {
            host.shape
        };
        if shape.len() != D {
            return Err(format!(
                "{key}: rank {} where {D} was expected",
                shape.len()
            ));
        }
        Ok(Tensor::from_data(
            TensorData::new(host.data, shape),
            self.device,
        ))
    }

    fn want(&self, f: &SafetensorsFile, key: &str) -> Res<Vec<f64>> {
        Ok(f.read(key)
            .map_err(|e| e.to_string())?
            .data
            .iter()
            .map(|&x| x as f64)
            .collect())
    }

    fn ids(&self, f: &SafetensorsFile, key: &str) -> Res<Tensor<B, 2, Int>> {
        let (shape, data) = f.read_ids(key).map_err(|e| e.to_string())?;
        Ok(Tensor::from_data(TensorData::new(data, shape), self.device))
    }
}

/// Every fixture on `device`, in the order of tests/fixtures/README.md. A fixture that cannot be
/// run is reported, and the others still run.
pub fn run_all<B: FluxOps>(
    fixtures: &Path,
    device: &B::Device,
) -> (Vec<ParityRow>, Vec<ParityFailure>) {
    let fx = Fixtures::<B> {
        dir: fixtures,
        device,
    };
    let ad = Fixtures::<Autodiff<B>> {
        dir: fixtures,
        device,
    };
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    let mut record = |fixture: &'static str, result: Res<Vec<ParityRow>>| match result {
        Ok(r) => rows.extend(r),
        Err(error) => failures.push(ParityFailure { fixture, error }),
    };
    record("tiny_flux", tiny_flux(&fx));
    record("tiny_flux_mod", tiny_flux_mod(&fx));
    record("tiny_flux_mod gradient", tiny_flux_mod_gradient::<B>(&ad));
    record("adapter_small", adapter_small(&fx));
    record("losses", losses(&ad));
    record("prodigy", prodigy::<B>(&ad));
    record("t5_tiny", t5_tiny(&fx));
    record("clip_text_tiny", clip_text_tiny(&fx));
    record("vae_tiny", vae_tiny(&fx));
    record("sampling", sampling(&fx));
    (rows, failures)
}

const FLUX_ATOL: Tolerance = Tolerance::Abs(2e-5);

fn tiny_flux_config<B: Backend>(fx: &Fixtures<B>) -> Res<FluxConfig> {
    serde_json::from_value(fx.json("tiny_flux.json")?["bfl_params"].clone())
        .map_err(|e| format!("tiny_flux.json bfl_params: {e}"))
}

fn load_flux<B: FluxOps>(fx: &Fixtures<B>, file: &str) -> Res<Flux<B>> {
    Flux::load(fx.path(file), &tiny_flux_config(fx)?, fx.device).map_err(|e| e.to_string())
}

fn tiny_flux_input<B: Backend>(fx: &Fixtures<B>, f: &SafetensorsFile) -> Res<FluxInput<B>> {
    Ok(FluxInput {
        img: fx.tensor(f, "hidden_states")?,
        img_ids: fx.tensor::<2>(f, "img_ids")?.unsqueeze_dim(0),
        txt: fx.tensor(f, "encoder_hidden_states")?,
        txt_ids: fx.tensor::<2>(f, "txt_ids")?.unsqueeze_dim(0),
        timesteps: fx.tensor(f, "timestep")?,
        y: fx.tensor(f, "pooled_projections")?,
        guidance: Some(fx.tensor(f, "guidance")?),
    })
}

const FLUX_FILES: [(&str, &str); 2] = [
    ("BFL file", "tiny_flux_weights_bfl.safetensors"),
    ("diffusers file", "tiny_flux_weights_diffusers.safetensors"),
];

fn tiny_flux<B: FluxOps>(fx: &Fixtures<B>) -> Res<Vec<ParityRow>> {
    let f = fx.open("tiny_flux.safetensors")?;
    let want = fx.want(&f, "output")?;
    FLUX_FILES
        .iter()
        .map(|(label, file)| {
            let out = load_flux(fx, file)?.try_forward(tiny_flux_input(fx, &f)?, None);
            let out = out.map_err(|e| e.to_string())?;
            Ok(ParityRow::new(
                "tiny_flux",
                &format!("output, {label}"),
                &values(out),
                &want,
                FLUX_ATOL,
            ))
        })
        .collect()
}

fn fixture_modulation<B: Backend>(fx: &Fixtures<B>, m: &SafetensorsFile) -> Res<TextModulation<B>> {
    Ok(TextModulation::new(
        fx.tensor(m, "delta_shared")?,
        fx.tensor(m, "delta_distinct")?,
    ))
}

fn tiny_flux_mod<B: FluxOps>(fx: &Fixtures<B>) -> Res<Vec<ParityRow>> {
    let f = fx.open("tiny_flux.safetensors")?;
    let m = fx.open("tiny_flux_mod.safetensors")?;
    let want = fx.want(&m, "output")?;
    FLUX_FILES
        .iter()
        .map(|(label, file)| {
            let delta = fixture_modulation(fx, &m)?;
            let out = load_flux(fx, file)?.try_forward(tiny_flux_input(fx, &f)?, Some(&delta));
            let out = out.map_err(|e| e.to_string())?;
            let quantity = format!("modulated output, {label}");
            Ok(ParityRow::new(
                "tiny_flux_mod",
                &quantity,
                &values(out),
                &want,
                FLUX_ATOL,
            ))
        })
        .collect()
}

/// The gradient of Σ out·w (w fixed, seeded) with respect to Δ_shared and Δ_distinct through the
/// tiny modulated FLUX, against the same computed by Flex in f64: the fixtures hold no FLUX
/// gradient, so the reference is the CPU backend, whose fused backward passes have their own
/// finite-difference tests. Tolerance 1e-4 relative (f32).
fn tiny_flux_mod_gradient<B: FluxOps>(fx: &Fixtures<Autodiff<B>>) -> Res<Vec<ParityRow>> {
    let reference = modulation_gradient::<burn::backend::Flex>(fx.dir, &Default::default(), true)?;
    let got = modulation_gradient::<B>(fx.dir, fx.device, false)?;
    Ok(["dΔ_shared", "dΔ_distinct"]
        .iter()
        .zip(got.iter().zip(&reference))
        .map(|(name, (g, r))| {
            ParityRow::new(
                "tiny_flux_mod",
                &format!("{name} of Σ out·w vs Flex f64"),
                g,
                r,
                Tolerance::Rel(1e-4),
            )
        })
        .collect())
}

fn modulation_gradient<B: FluxOps>(
    dir: &Path,
    device: &B::Device,
    f64_reference: bool,
) -> Res<[Vec<f64>; 2]> {
    type AB<B> = Autodiff<B>;
    let fx = Fixtures::<AB<B>> { dir, device };
    let f = fx.open("tiny_flux.safetensors")?;
    let m = fx.open("tiny_flux_mod.safetensors")?;
    let mut flux = load_flux(&fx, "tiny_flux_weights_bfl.safetensors")?.no_grad();
    let mut input = tiny_flux_input(&fx, &f)?;
    let delta = fixture_modulation(&fx, &m)?;
    let (mut shared, mut distinct) = (
        delta.shared.ok_or("tiny_flux_mod holds no delta_shared")?,
        delta
            .distinct
            .ok_or("tiny_flux_mod holds no delta_distinct")?,
    );
    if f64_reference {
        use burn::tensor::FloatDType::F64;
        flux = flux.with_weight_dtype(F64);
        input.img = input.img.cast(F64);
        input.txt = input.txt.cast(F64);
        input.y = input.y.cast(F64);
        (shared, distinct) = (shared.cast(F64), distinct.cast(F64));
    }
    let (shared, distinct) = (shared.require_grad(), distinct.require_grad());
    let out = flux
        .try_forward(
            input,
            Some(&TextModulation::new(shared.clone(), distinct.clone())),
        )
        .map_err(|e| e.to_string())?;
    // A fixed weighting (not the mean), so every output element's gradient path is exercised.
    let n = out.shape().num_elements();
    let weights: Vec<f32> = (0..n)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    let weights = Tensor::<AB<B>, 1>::from_data(TensorData::new(weights, [n]), device)
        .reshape(out.dims())
        .cast(out.dtype());
    let grads = (out * weights).sum().backward();
    let grad = |t: Tensor<AB<B>, 3>| t.grad(&grads).map(values);
    let grad4 = |t: Tensor<AB<B>, 4>| t.grad(&grads).map(values);
    Ok([
        grad(shared).ok_or("no gradient reached Δ_shared")?,
        grad4(distinct).ok_or("no gradient reached Δ_distinct")?,
    ])
}

fn adapter_small<B: FluxOps>(fx: &Fixtures<B>) -> Res<Vec<ParityRow>> {
    // The official constructor's arguments (tests/fixtures/README.md §3): net2 has
    // 19 + pblock_single_blocks blocks.
    let c = &fx.json("adapter_small.json")?["constructor"];
    let field = |k: &str| {
        c[k].as_i64()
            .ok_or(format!("adapter_small.json constructor.{k}"))
    };
    let config = AdapterConfig {
        text_dim: field("input_text_dim")? as usize,
        user_dim: field("input_image_dim")? as usize,
        width: field("width")? as usize,
        heads: field("heads")? as usize,
        layers: field("layers")? as usize,
        hidden: field("out_dim")? as usize,
        blocks: (19 + field("pblock_single_blocks")?) as usize,
        shared: true,
        distinct: true,
    };
    let f = fx.open("adapter_small.safetensors")?;
    let adapter = PreferenceAdapter::<B>::load(
        fx.path("adapter_small_weights.safetensors"),
        &config,
        fx.device,
    )
    .map_err(|e| e.to_string())?;
    let delta = adapter.forward(fx.tensor(&f, "text")?, fx.tensor(&f, "user")?);
    let tol = Tolerance::Abs(1e-5);
    Ok(vec![
        ParityRow::new(
            "adapter_small",
            "Δ_shared",
            &values(delta.shared.ok_or("no Δ_shared")?),
            &fx.want(&f, "delta_shared")?,
            tol,
        ),
        ParityRow::new(
            "adapter_small",
            "Δ_distinct",
            &values(delta.distinct.ok_or("no Δ_distinct")?),
            &fx.want(&f, "delta_distinct")?,
            tol,
        ),
    ])
}

fn losses<B: Backend>(fx: &Fixtures<Autodiff<B>>) -> Res<Vec<ParityRow>> {
    let f = fx.open("losses.safetensors")?;
    let mut rows = Vec::new();
    for (variant, value_key, grad_key) in [
        (
            DispersionVariant::Released,
            "disp_loss_fp32",
            "disp_loss_fp32_grad",
        ),
        (
            DispersionVariant::Stable,
            "stable_disp_loss",
            "stable_disp_loss_grad",
        ),
    ] {
        let z = fx.tensor::<3>(&f, "z")?.reshape([3, 20]).require_grad();
        let loss = dispersion_loss(z.clone(), variant);
        let grads = loss.clone().backward();
        rows.push(ParityRow::new(
            "losses",
            value_key,
            &values(loss),
            &fx.want(&f, value_key)?,
            Tolerance::Rel(1e-5),
        ));
        let grad = z.grad(&grads).ok_or("no gradient reached z")?;
        rows.push(ParityRow::new(
            "losses",
            grad_key,
            &values(grad),
            &fx.want(&f, grad_key)?,
            Tolerance::Abs(1e-6),
        ));
    }
    let pred = fx.tensor::<3>(&f, "flow_pred")?.require_grad();
    let loss = flow_matching_loss(
        pred.clone(),
        fx.tensor(&f, "flow_x0")?,
        fx.tensor(&f, "flow_noise")?,
    );
    let grads = loss.clone().backward();
    rows.push(ParityRow::new(
        "losses",
        "flow_loss",
        &values(loss),
        &fx.want(&f, "flow_loss")?,
        Tolerance::Rel(1e-5),
    ));
    let grad = pred.grad(&grads).ok_or("no gradient reached pred")?;
    rows.push(ParityRow::new(
        "losses",
        "flow_grad_pred",
        &values(grad),
        &fx.want(&f, "flow_grad_pred")?,
        Tolerance::Abs(1e-6),
    ));
    Ok(rows)
}

/// Steps of the prodigy fixture compared (its well-conditioned part; the crate test explains
/// why later steps need a noise-aware tolerance).
const PRODIGY_STEPS: usize = 20;

fn prodigy<B: FluxOps>(fx: &Fixtures<Autodiff<B>>) -> Res<Vec<ParityRow>> {
    let f = fx.open("prodigy.safetensors")?;
    let x: Tensor<Autodiff<B>, 2> = fx.tensor(&f, "X")?;
    let (_, labels) = f.read_ids("y").map_err(|e| e.to_string())?;
    let one_hot: Vec<f32> = labels
        .iter()
        .flat_map(|&l| (0..3).map(move |c| if c as i64 == l { 1.0 } else { 0.0 }))
        .collect();
    let one_hot =
        Tensor::<Autodiff<B>, 2>::from_data(TensorData::new(one_hot, [labels.len(), 3]), fx.device);
    let inner = Fixtures::<B> {
        dir: fx.dir,
        device: fx.device,
    };
    let mut params: Vec<Tensor<B, 1>> = vec![
        inner.tensor::<2>(&f, "W_init")?.reshape([18]),
        inner.tensor(&f, "b_init")?,
    ];
    let mut opt = Prodigy::<B>::new(ProdigyConfig::premier());
    let (mut loss, mut d) = (Vec::new(), Vec::new());
    for _ in 0..PRODIGY_STEPS {
        let w = Tensor::<Autodiff<B>, 1>::from_inner(params[0].clone()).require_grad();
        let b = Tensor::<Autodiff<B>, 1>::from_inner(params[1].clone()).require_grad();
        let logits = x.clone().matmul(w.clone().reshape([6, 3])) + b.clone().reshape([1, 3]);
        let l = (log_softmax(logits, 1) * one_hot.clone())
            .sum_dim(1)
            .mean()
            .neg();
        loss.extend(values(l.clone()));
        let grads = l.backward();
        let g = vec![
            w.grad(&grads).ok_or("no gradient reached W")?,
            b.grad(&grads).ok_or("no gradient reached b")?,
        ];
        params = opt.step(params, g);
        d.push(opt.d());
    }
    let read = |key: &str| -> Res<Vec<f64>> {
        let (_, all) = f.read_f64(key).map_err(|e| e.to_string())?;
        Ok(all.into_iter().take(PRODIGY_STEPS).collect())
    };
    let tol = Tolerance::Rel(1e-5);
    Ok(vec![
        ParityRow::new(
            "prodigy",
            "loss, steps 1–20",
            &loss,
            &read("premier_loss_f64")?,
            tol,
        ),
        ParityRow::new("prodigy", "d, steps 1–20", &d, &read("premier_d_f64")?, tol),
        ParityRow::new(
            "prodigy",
            "W after step 20",
            &values(params[0].clone()),
            &inner.want(&f, "premier_W_step20")?,
            tol,
        ),
    ])
}

fn config_of<T: serde::de::DeserializeOwned, B: Backend>(fx: &Fixtures<B>, file: &str) -> Res<T> {
    serde_json::from_value(fx.json(file)?["config"].clone())
        .map_err(|e| format!("{file} config: {e}"))
}

fn t5_tiny<B: Backend>(fx: &Fixtures<B>) -> Res<Vec<ParityRow>> {
    let config: T5Config = config_of(fx, "t5_tiny.json")?;
    let model = T5Encoder::<B>::load(fx.path("t5_tiny_weights.safetensors"), &config, fx.device)
        .map_err(|e| e.to_string())?;
    let f = fx.open("t5_tiny.safetensors")?;
    let out = model
        .try_forward(fx.ids(&f, "input_ids")?)
        .map_err(|e| e.to_string())?;
    Ok(vec![ParityRow::new(
        "t5_tiny",
        "last_hidden_state",
        &values(out),
        &fx.want(&f, "last_hidden_state")?,
        Tolerance::Abs(1e-4),
    )])
}

fn clip_text_tiny<B: Backend>(fx: &Fixtures<B>) -> Res<Vec<ParityRow>> {
    let config: ClipTextConfig = config_of(fx, "clip_text_tiny.json")?;
    let model = ClipTextEncoder::<B>::load(
        fx.path("clip_text_tiny_weights.safetensors"),
        &config,
        fx.device,
    )
    .map_err(|e| e.to_string())?;
    let f = fx.open("clip_text_tiny.safetensors")?;
    let (hidden, pooled) = model.forward(fx.ids(&f, "input_ids")?);
    let tol = Tolerance::Abs(1e-4);
    Ok(vec![
        ParityRow::new(
            "clip_text_tiny",
            "last_hidden_state",
            &values(hidden),
            &fx.want(&f, "last_hidden_state")?,
            tol,
        ),
        ParityRow::new(
            "clip_text_tiny",
            "pooler_output",
            &values(pooled),
            &fx.want(&f, "pooler_output")?,
            tol,
        ),
    ])
}

fn vae_tiny<B: Backend>(fx: &Fixtures<B>) -> Res<Vec<ParityRow>> {
    let config: AutoencoderConfig =
        serde_json::from_value(fx.json("vae_tiny.json")?["diffusers_config"].clone())
            .map_err(|e| format!("vae_tiny.json diffusers_config: {e}"))?;
    let f = fx.open("vae_tiny.safetensors")?;
    let mut rows = Vec::new();
    for (label, file) in [
        ("BFL file", "vae_tiny_weights_bfl.safetensors"),
        ("diffusers file", "vae_tiny_weights_diffusers.safetensors"),
    ] {
        let vae =
            Autoencoder::<B>::load(fx.path(file), &config, fx.device).map_err(|e| e.to_string())?;
        let posterior = vae
            .try_encode(fx.tensor(&f, "image")?)
            .map_err(|e| e.to_string())?;
        rows.push(ParityRow::new(
            "vae_tiny",
            &format!("posterior mean, {label}"),
            &values(posterior.mean.clone()),
            &fx.want(&f, "posterior_mean")?,
            Tolerance::Abs(1e-5),
        ));
        let latent = scale_latent(posterior.mean, &config);
        rows.push(ParityRow::new(
            "vae_tiny",
            &format!("scaled latent, {label}"),
            &values(latent),
            &fx.want(&f, "latent_scaled")?,
            Tolerance::Abs(1e-5),
        ));
        let z = unscale_latent(fx.tensor(&f, "latent_scaled")?, &config);
        let decoded = vae.try_decode(z).map_err(|e| e.to_string())?;
        rows.push(ParityRow::new(
            "vae_tiny",
            &format!("decoded, {label}"),
            &values(decoded),
            &fx.want(&f, "decoded")?,
            Tolerance::Abs(1e-4),
        ));
    }
    Ok(rows)
}

fn sampling<B: FluxOps>(fx: &Fixtures<B>) -> Res<Vec<ParityRow>> {
    let f = fx.open("sampling.safetensors")?;
    let inputs = fx.open("tiny_flux.safetensors")?;
    let flux = load_flux(fx, "tiny_flux_weights_bfl.safetensors")?;
    let timesteps = f.read("denoise_timesteps").map_err(|e| e.to_string())?.data;
    let latent = denoise(
        &flux,
        fx.tensor(&f, "denoise_img_packed")?,
        fx.tensor::<2>(&f, "denoise_img_ids")?.unsqueeze_dim(0),
        fx.tensor(&inputs, "encoder_hidden_states")?,
        fx.tensor::<2>(&f, "denoise_txt_ids")?.unsqueeze_dim(0),
        fx.tensor(&inputs, "pooled_projections")?,
        Some(Tensor::from_floats([3.5], fx.device)),
        &timesteps,
        None,
        &mut (),
    )
    .map_err(|e| e.to_string())?;
    let steps = timesteps.len() - 1;
    let key = format!("denoise_latent_step{steps}");
    Ok(vec![ParityRow::new(
        "sampling",
        &format!("latent after {steps} Euler steps"),
        &values(latent),
        &fx.want(&f, &key)?,
        Tolerance::Abs(2e-5),
    )])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nan_and_length_mismatches_never_pass() {
        let row = |got: &[f64]| ParityRow::new("t", "q", got, &[1.0, 2.0], Tolerance::Abs(1e-3));
        assert!(row(&[1.0, 2.0005]).passes());
        assert!(!row(&[1.0, 2.01]).passes());
        assert!(!row(&[f64::NAN, 2.0]).passes());
        assert!(!row(&[1.0]).passes());
        let rel = ParityRow::new(
            "t",
            "q",
            &[10.0, 20.001],
            &[10.0, 20.0],
            Tolerance::Rel(1e-4),
        );
        assert!(rel.passes(), "{rel:?}");
        assert!((rel.rel_l2 - 0.001 / 500f64.sqrt()).abs() < 1e-9, "{rel:?}");
    }
}
