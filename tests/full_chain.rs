//! The whole Premier model on tiny sizes: user table → adapters → Δ → modulated FLUX → flow loss
//! (+ dispersion), with finite-difference checks that gradients reach a user embedding entry and an
//! adapter weight through the frozen backbone. Runs Flex in f64 (set before any tensor exists, so
//! this binary holds only this test); tolerance 1e-6 relative.

use burn::backend::{Autodiff, Flex};
use burn::module::Param;
use burn::prelude::*;
use burn::tensor::{set_default_dtypes, Distribution, FloatDType, IntDType};
use premier::adapter::{AdapterConfig, PreferenceAdapter};
use premier::losses::{dispersion_loss, flow_matching_loss, interpolate, DispersionVariant};
use premier::mmdit::{img_ids, txt_ids, Flux, FluxConfig, FluxInput};
use premier::users::{UserShape, UserTable};

type AB = Autodiff<Flex>;

struct World {
    flux: Flux<AB>,
    x0: Tensor<AB, 3>,
    noise: Tensor<AB, 3>,
    t: Tensor<AB, 1>,
    text: Tensor<AB, 3>,
    pooled: Tensor<AB, 2>,
    users: [usize; 2],
}

impl World {
    /// Stage-1 objective for a batch of two users: flow loss + 0.1 · dispersion of both Δ.
    fn loss(&self, table: &UserTable<AB>, adapter: &PreferenceAdapter<AB>) -> Tensor<AB, 1> {
        let device = self.x0.device();
        let user = table.lookup(&self.users).unwrap();
        let delta = adapter.forward(self.text.clone(), user);
        let input = FluxInput {
            img: interpolate(self.x0.clone(), self.noise.clone(), self.t.clone()),
            img_ids: img_ids(2, 4, 4, &device),
            txt: self.text.clone(),
            txt_ids: txt_ids(2, 5, &device),
            timesteps: self.t.clone(),
            y: self.pooled.clone(),
            guidance: Some(Tensor::ones([2], &device)),
        };
        let pred = self.flux.forward(input, Some(&delta));
        let flatten = |t: Tensor<AB, 3>| t.reshape([2, -1]);
        let shared = flatten(delta.shared.clone().unwrap());
        let distinct = delta.distinct.clone().unwrap().reshape([2, -1]);
        flow_matching_loss(pred, self.x0.clone(), self.noise.clone())
            + (dispersion_loss(shared, DispersionVariant::Stable)
                + dispersion_loss(distinct, DispersionVariant::Stable))
                * 0.1
    }
}

fn value(t: Tensor<AB, 1>) -> f64 {
    t.into_data().to_vec::<f64>().unwrap()[0]
}

/// `param` with `h` added at flat index `index`.
fn bumped<const D: usize>(param: &Tensor<AB, D>, index: usize, h: f64) -> Tensor<AB, D> {
    let mut v = param.clone().into_data().to_vec::<f64>().unwrap();
    v[index] += h;
    Tensor::from_data(TensorData::new(v, param.dims()), &param.device())
}

fn grad_at<const D: usize>(grad: Tensor<Flex, D>, index: usize) -> f64 {
    grad.into_data().to_vec::<f64>().unwrap()[index]
}

#[test]
fn gradients_reach_user_embedding_and_adapter_through_frozen_flux() {
    let device = Default::default();
    set_default_dtypes::<AB>(&device, FloatDType::F64, IntDType::I32).unwrap();
    <AB as Backend>::seed(&device, 21);
    let normal = Distribution::Normal(0.0, 1.0);

    let flux_config = FluxConfig::tiny();
    // The backbone is frozen: its parameters take no gradient.
    let flux = Flux::<AB>::init(&flux_config, &device).unwrap().no_grad();
    let shape = UserShape {
        users: 4,
        tokens: 3,
        dim: 6,
    };
    let table = UserTable::<AB>::init(shape, &device);
    let mut adapter_config = AdapterConfig::small(16, 6, 16, 2);
    adapter_config.width = 8;
    let adapter = PreferenceAdapter::<AB>::init(&adapter_config, &device).unwrap();
    // Give the adapter's output LayerNorms weight 1 so Δ is not ~1e-4 and the loss feels it.
    let mut adapter = adapter;
    for net in [
        adapter.net.as_mut().unwrap(),
        adapter.net2.as_mut().unwrap(),
    ] {
        let n = net.norm_weight.dims()[0];
        net.norm_weight = Param::from_tensor(Tensor::ones([n], &device));
    }

    let world = World {
        flux,
        x0: Tensor::random([2, 4, 8], normal, &device),
        noise: Tensor::random([2, 4, 8], normal, &device),
        t: Tensor::from_floats([0.3, 0.8], &device),
        text: Tensor::random([2, 5, 16], normal, &device),
        pooled: Tensor::random([2, 12], normal, &device),
        users: [1, 3],
    };

    let grads = world.loss(&table, &adapter).backward();
    let h = 1e-5;

    // A user embedding entry: user 3, token 1, channel 2.
    let table_weight = table.weight.val();
    let index = 3 * 18 + 6 + 2;
    let analytic = grad_at(table_weight.grad(&grads).unwrap(), index);
    let plus = UserTable::from_weight(bumped(&table_weight, index, h), shape, table.rows());
    let minus = UserTable::from_weight(bumped(&table_weight, index, -h), shape, table.rows());
    let numeric =
        (value(world.loss(&plus, &adapter)) - value(world.loss(&minus, &adapter))) / (2.0 * h);
    let rel = (analytic - numeric).abs() / analytic.abs();
    eprintln!("user embedding entry: autodiff {analytic:.10}, FD {numeric:.10}, rel {rel:.1e}");
    assert!(analytic.abs() > 1e-8 && rel < 1e-6);
    // A user not in the batch gets no gradient.
    assert_eq!(grad_at(table_weight.grad(&grads).unwrap(), 0), 0.0);

    // An adapter weight deep inside the block-distinct net.
    let weight = adapter.net2.as_ref().unwrap().perceiver_blocks[1]
        .c_fc
        .weight
        .val();
    let index = 5;
    let analytic = grad_at(weight.grad(&grads).unwrap(), index);
    let with = |w: Tensor<AB, 2>| {
        let mut a = adapter.clone();
        a.net2.as_mut().unwrap().perceiver_blocks[1].c_fc.weight = Param::from_tensor(w);
        value(world.loss(&table, &a))
    };
    let numeric = (with(bumped(&weight, index, h)) - with(bumped(&weight, index, -h))) / (2.0 * h);
    let rel = (analytic - numeric).abs() / analytic.abs();
    eprintln!("adapter weight: autodiff {analytic:.10}, FD {numeric:.10}, rel {rel:.1e}");
    assert!(analytic.abs() > 1e-8 && rel < 1e-6);

    // The frozen backbone collected no gradient.
    assert!(world.flux.img_in.weight.val().grad(&grads).is_none());
}
