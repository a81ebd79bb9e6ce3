//! LPIPS (Zhang et al. 2018, the `lpips` package 0.1.4, version 0.1): the distance of two images
//! through a torchvision AlexNet or VGG16 `features` stack, each tapped layer's activations
//! unit-normalized over channels, their squared difference weighted per channel by a trained
//! 1 × 1 `lin` layer and averaged over space, summed over the layers.
//!
//! Written here rather than taken from burn-train 0.21's `metric::vision::lpips`: that one
//! downloads its weights from the network when first used, panics when it cannot, and would
//! bring burn-train's dependencies into the library; this one reads the weights from local
//! safetensors files (torchvision's `features.N.*` keys and the package's `linN.model.1.weight`)
//! and returns errors.

use std::path::Path;

use burn::prelude::*;
use burn::tensor::module::{conv2d, max_pool2d};
use burn::tensor::ops::ConvOptions;
use premier_io::{Checkpoint, TensorReader};

use crate::error::EvalError;

/// Which backbone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LpipsNet {
    /// torchvision `alexnet().features` (the package's default).
    Alex,
    /// torchvision `vgg16().features`.
    Vgg,
}

/// One step of a `features` stack.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// A convolution with torchvision index `index`, kernel side, stride and padding.
    Conv {
        index: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    },
    Relu,
    MaxPool {
        kernel: usize,
        stride: usize,
    },
}

impl LpipsNet {
    /// The `features` stack, in torchvision's order and indices.
    fn steps(self) -> Vec<Step> {
        let conv = |index, kernel, stride, padding| Step::Conv {
            index,
            kernel,
            stride,
            padding,
        };
        match self {
            LpipsNet::Alex => vec![
                conv(0, 11, 4, 2),
                Step::Relu,
                Step::MaxPool {
                    kernel: 3,
                    stride: 2,
                },
                conv(3, 5, 1, 2),
                Step::Relu,
                Step::MaxPool {
                    kernel: 3,
                    stride: 2,
                },
                conv(6, 3, 1, 1),
                Step::Relu,
                conv(8, 3, 1, 1),
                Step::Relu,
                conv(10, 3, 1, 1),
                Step::Relu,
            ],
            LpipsNet::Vgg => {
                let mut steps = Vec::new();
                for (block, convs) in [2, 2, 3, 3, 3].into_iter().enumerate() {
                    if block > 0 {
                        steps.push(Step::MaxPool {
                            kernel: 2,
                            stride: 2,
                        });
                    }
                    for _ in 0..convs {
                        steps.push(conv(steps.len(), 3, 1, 1));
                        steps.push(Step::Relu);
                    }
                }
                steps
            }
        }
    }

    /// The steps after which the package taps the activations (its `slice1` … `slice5`).
    fn taps(self) -> [usize; 5] {
        match self {
            LpipsNet::Alex => [1, 4, 7, 9, 11],
            LpipsNet::Vgg => [3, 8, 15, 22, 29],
        }
    }
}

/// A loaded LPIPS.
#[derive(Debug)]
pub struct Lpips<B: Backend> {
    net: LpipsNet,
    /// Per convolution step: weight `[out, in, k, k]` and bias `[out]`.
    convs: Vec<(Tensor<B, 4>, Tensor<B, 1>)>,
    /// Per tap: the lin layer's weight `[1, channels, 1, 1]`.
    lins: Vec<Tensor<B, 4>>,
}

/// The package's `ScalingLayer`: inputs in [-1, 1] shifted and scaled per channel.
const SHIFT: [f32; 3] = [-0.030, -0.088, -0.188];
const SCALE: [f32; 3] = [0.458, 0.448, 0.450];

impl<B: Backend> Lpips<B> {
    /// Loads the backbone from `backbone` (torchvision keys `features.N.{weight,bias}`) and the
    /// lin layers from `lins` (`linN.model.1.weight`); they may be one file. Channel counts are
    /// read from the weights and checked against each other.
    pub fn load(
        net: LpipsNet,
        backbone: impl AsRef<Path>,
        lins: impl AsRef<Path>,
        device: &B::Device,
    ) -> Result<Self, EvalError> {
        let (backbone, lins) = (backbone.as_ref(), lins.as_ref());
        let mut file = Checkpoint::open(backbone).map_err(EvalError::Weights)?;
        let mut convs = Vec::new();
        let mut channels = 3;
        let mut tapped = Vec::new();
        let taps = net.taps();
        for (i, step) in net.steps().into_iter().enumerate() {
            if let Step::Conv { index, kernel, .. } = step {
                let key = format!("features.{index}.weight");
                // The output width is the file's; a missing key fails at the read, named.
                let out = file
                    .shape_of(&key)
                    .and_then(|s| s.first().copied())
                    .unwrap_or(0);
                let weight = file
                    .read_tensor(&key, &[out, channels, kernel, kernel])
                    .map_err(EvalError::Weights)?
                    .into_tensor(device);
                let bias = file
                    .read_tensor(&format!("features.{index}.bias"), &[out])
                    .map_err(EvalError::Weights)?
                    .into_tensor(device);
                convs.push((weight, bias));
                channels = out;
            }
            if taps.contains(&i) {
                tapped.push(channels);
            }
        }
        let same_file = backbone == lins;
        if !same_file {
            file.ensure_all_used().map_err(EvalError::Weights)?;
        }
        let mut lin_file = if same_file {
            file
        } else {
            Checkpoint::open(lins).map_err(EvalError::Weights)?
        };
        let lins = tapped
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                lin_file
                    .read_tensor(&format!("lin{i}.model.1.weight"), &[1, c, 1, 1])
                    .map(|t| t.into_tensor(device))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(EvalError::Weights)?;
        lin_file.ensure_all_used().map_err(EvalError::Weights)?;
        Ok(Self { net, convs, lins })
    }

    /// The tapped activations of `x` (`[n, 3, h, w]`, already scaled).
    fn features(&self, x: Tensor<B, 4>) -> Vec<Tensor<B, 4>> {
        let taps = self.net.taps();
        let mut convs = self.convs.iter();
        let mut x = x;
        let mut out = Vec::with_capacity(taps.len());
        for (i, step) in self.net.steps().into_iter().enumerate() {
            x = match step {
                Step::Conv {
                    stride, padding, ..
                } => {
                    let (weight, bias) =
                        convs.next().expect("a weight per convolution (loaded so)");
                    conv2d(
                        x,
                        weight.clone(),
                        Some(bias.clone()),
                        ConvOptions::new([stride; 2], [padding; 2], [1, 1], 1),
                    )
                }
                Step::Relu => burn::tensor::activation::relu(x),
                Step::MaxPool { kernel, stride } => {
                    max_pool2d(x, [kernel; 2], [stride; 2], [0, 0], [1, 1], false)
                }
            };
            if taps.contains(&i) {
                out.push(x.clone());
            }
        }
        out
    }

    /// LPIPS of each pair: `a`, `b` `[n, 3, h, w]` with values in [-1, 1] → `[n]`.
    pub fn distance(&self, a: Tensor<B, 4>, b: Tensor<B, 4>) -> Result<Tensor<B, 1>, EvalError> {
        let (da, db) = (a.dims(), b.dims());
        if da != db || da[1] != 3 {
            return Err(EvalError::Mismatch(format!(
                "LPIPS compares images of one shape [n, 3, h, w]; given {da:?} and {db:?}"
            )));
        }
        let device = a.device();
        let shift = Tensor::<B, 1>::from_floats(SHIFT, &device).reshape([1, 3, 1, 1]);
        let scale = Tensor::<B, 1>::from_floats(SCALE, &device).reshape([1, 3, 1, 1]);
        let scaled = |x: Tensor<B, 4>| (x - shift.clone()) / scale.clone();
        let (fa, fb) = (self.features(scaled(a)), self.features(scaled(b)));
        let unit = |x: Tensor<B, 4>| {
            let norm = x.clone().powi_scalar(2).sum_dim(1).sqrt();
            x / (norm + 1e-10)
        };
        let mut total = Tensor::<B, 1>::zeros([da[0]], &device);
        for ((a, b), lin) in fa.into_iter().zip(fb).zip(&self.lins) {
            let diff = (unit(a) - unit(b)).powi_scalar(2);
            // The 1 × 1 lin convolution without bias, then the spatial mean.
            let weighted = (diff * lin.clone()).sum_dim(1);
            let [n, _, h, w] = weighted.dims();
            total = total + weighted.reshape([n, h * w]).mean_dim(1).reshape([n]);
        }
        Ok(total)
    }
}
