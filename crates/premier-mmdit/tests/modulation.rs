//! Properties of the text-modulation hook, and gradients flowing through the frozen backbone into Δ.

mod common;

use burn::prelude::*;
use burn::tensor::Distribution;
use common::{max_abs_diff, random_input, small_config, B, TXT};
use premier_mmdit::{Flux, FluxConfig, FluxInput, ForwardError, TextModulation};

fn seeded_model<Bk: Backend>(config: &FluxConfig, device: &Bk::Device) -> Flux<Bk> {
    Bk::seed(device, 7);
    Flux::init(config, device).unwrap()
}

#[test]
fn zero_modulation_equals_no_modulation() {
    let device = Default::default();
    let config = small_config();
    let flux = seeded_model::<B>(&config, &device);
    let input = random_input::<B>(&config, 2, &device);
    let plain = flux.forward(input.clone(), None);
    let zeros = TextModulation::new(
        Tensor::zeros([2, TXT, 32], &device),
        Tensor::zeros([2, TXT, 2, 32], &device),
    );
    assert_eq!(
        max_abs_diff(plain.clone(), flux.forward(input.clone(), Some(&zeros))),
        0.0
    );
    let empty = TextModulation {
        shared: None,
        distinct: None,
    };
    assert_eq!(
        max_abs_diff(plain.clone(), flux.forward(input.clone(), Some(&empty))),
        0.0
    );
    // And a real Δ does change the prediction.
    let delta = TextModulation {
        shared: Some(Tensor::random(
            [2, TXT, 32],
            Distribution::Normal(0.0, 0.5),
            &device,
        )),
        distinct: None,
    };
    assert!(max_abs_diff(plain, flux.forward(input, Some(&delta))) > 1e-3);
}

#[test]
fn shared_and_distinct_add_up_per_block() {
    let device = Default::default();
    let shared = Tensor::<B, 3>::random([1, TXT, 32], Distribution::Normal(0.0, 1.0), &device);
    let distinct = Tensor::<B, 4>::random([1, TXT, 2, 32], Distribution::Normal(0.0, 1.0), &device);
    let m = TextModulation::new(shared.clone(), distinct.clone());
    for j in 0..2 {
        let want = shared.clone() + distinct.clone().narrow(2, j, 1).reshape([1, TXT, 32]);
        assert_eq!(max_abs_diff(m.double_block_delta(j).unwrap(), want), 0.0);
    }
}

/// A Δ on text token 3 changes that token's modulation and its q, k, v, and nothing else, until
/// attention mixes the tokens.
#[test]
fn delta_on_one_token_is_local_before_attention() {
    let device = Default::default();
    let config = small_config();
    let flux = seeded_model::<B>(&config, &device);
    let input = random_input::<B>(&config, 1, &device);
    let vec = flux.conditioning_vector(
        input.timesteps.clone(),
        input.y.clone(),
        input.guidance.clone(),
    );
    let txt = flux.txt_in.forward(input.txt.clone());
    let block = &flux.double_blocks[0];
    let rope =
        premier_mmdit::embed::Rope::new(input.txt_ids.clone(), &config.axes_dim, config.theta);

    let mut delta = vec![0f32; TXT * 32];
    for c in 0..32 {
        delta[3 * 32 + c] = 0.3 * ((c as f32) - 16.0) / 16.0;
    }
    let delta = Tensor::<B, 3>::from_data(TensorData::new(delta, [1, TXT, 32]), &device);

    let pre_attention = |d: Option<Tensor<B, 3>>| {
        let mods = block.txt_modulation(vec.clone(), d);
        let (q, k, v) = block.txt_attn.qkv(mods[0].modulate(txt.clone()), &rope);
        // Per token: modulation values (6·32 after broadcasting) and q, k, v, as [TXT, features].
        let mods: Vec<Tensor<B, 3>> = mods
            .iter()
            .flat_map(|m| [m.shift.clone(), m.scale.clone(), m.gate.clone()])
            .map(|t| t.expand([1, TXT, 32]))
            .collect();
        let per_token = |t: Tensor<B, 4>| t.swap_dims(1, 2).reshape([TXT, 32]);
        Tensor::cat(
            vec![
                Tensor::cat(mods, 2).reshape([TXT, 6 * 32]),
                per_token(q),
                per_token(k),
                per_token(v),
            ],
            1,
        )
    };
    let base = pre_attention(None);
    let moved = pre_attention(Some(delta.clone()));
    for token in 0..TXT {
        let diff = max_abs_diff(
            base.clone().narrow(0, token, 1),
            moved.clone().narrow(0, token, 1),
        );
        if token == 3 {
            assert!(diff > 1e-3, "token 3 should change, diff {diff}");
        } else {
            assert_eq!(diff, 0.0, "token {token} changed before attention");
        }
    }

    // After the whole block, token 3's output moves; image tokens keep the plain y modulation, but
    // attention lets token 3's change reach them.
    let img = flux.img_in.forward(input.img.clone());
    let rope = premier_mmdit::embed::Rope::new(
        Tensor::cat(vec![input.txt_ids.clone(), input.img_ids.clone()], 1),
        &config.axes_dim,
        config.theta,
    );
    let (_, txt_plain) = block.forward(img.clone(), txt.clone(), vec.clone(), None, &rope);
    let (_, txt_moved) = block.forward(img, txt, vec, Some(delta), &rope);
    assert!(max_abs_diff(txt_plain.narrow(1, 3, 1), txt_moved.narrow(1, 3, 1)) > 1e-3);
}

#[test]
fn bad_modulation_and_missing_guidance_are_errors() {
    let device = Default::default();
    let config = small_config();
    let flux = seeded_model::<B>(&config, &device);
    let input = random_input::<B>(&config, 1, &device);
    let wrong_depth = TextModulation {
        shared: None,
        distinct: Some(Tensor::zeros([1, TXT, 3, 32], &device)),
    };
    let err = flux
        .try_forward(input.clone(), Some(&wrong_depth))
        .unwrap_err();
    assert!(
        matches!(err, ForwardError::Modulation(ref m) if m.contains("distinct") && m.contains("depth 2")),
        "{err}"
    );

    let no_guidance = FluxInput {
        guidance: None,
        ..input.clone()
    };
    assert!(matches!(
        flux.try_forward(no_guidance, None),
        Err(ForwardError::MissingGuidance)
    ));

    let wrong_txt = FluxInput {
        txt: Tensor::zeros([1, TXT, 7], &device),
        ..input
    };
    let err = flux.try_forward(wrong_txt, None).unwrap_err();
    assert!(
        matches!(err, ForwardError::Shape { ref input, .. } if input == "txt"),
        "{err}"
    );
}

/// The sigmoid form of GELU(tanh) equals the tanh form, and its gradient stays finite where
/// an exp-based form would overflow.
#[test]
fn gelu_tanh_matches_definition_and_has_finite_gradients() {
    use burn::backend::Autodiff;
    use premier_mmdit::fused::composite::gelu_tanh;
    let device = Default::default();
    let values: Vec<f32> = (-400..=400).map(|i| i as f32 * 0.05).collect();
    let n = values.len();
    let x = Tensor::<Autodiff<B>, 1>::from_data(TensorData::new(values.clone(), [n]), &device)
        .require_grad();
    let y = gelu_tanh(x.clone());
    let got = y.clone().into_data().to_vec::<f32>().unwrap();
    for (v, g) in values.iter().zip(&got) {
        let v = *v as f64;
        let want = 0.5
            * v
            * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v.powi(3))).tanh());
        assert!(
            (want - *g as f64).abs() <= 1e-6 * want.abs().max(1.0),
            "gelu({v}) = {g}, want {want}"
        );
    }
    let grads = y.sum().backward();
    let grad = x.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap();
    assert!(grad.iter().all(|g| g.is_finite()), "non-finite gradient");
    assert!(grad[0].abs() < 1e-6 && (grad[n - 1] - 1.0).abs() < 1e-6);
}
