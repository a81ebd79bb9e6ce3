//! LPIPS against the `lpips` package (fixture `lpips_tiny`, tests/fixtures/README.md §13): its own
//! forward on narrow torchvision-layout AlexNet and VGG16 stacks; distances within 1e-5 of the
//! largest; LPIPS(x, x) = 0 and it grows with the noise; the package's trained lin files load
//! for the real widths; wrong files and shapes are errors.

use std::path::PathBuf;

use burn::backend::Flex;
use burn::prelude::*;
use premier_eval::{EvalError, Lpips, LpipsNet};
use premier_io::SafetensorsFile;

type B = Flex;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

fn tiny(net: LpipsNet, name: &str) -> Lpips<B> {
    let file = fixture(&format!("lpips_{name}_tiny_weights.safetensors"));
    Lpips::load(net, &file, &file, &Default::default()).unwrap()
}

#[test]
fn distances_match_the_package() {
    let f = SafetensorsFile::open(&fixture("lpips.safetensors")).unwrap();
    let input =
        |key: &str| -> Tensor<B, 4> { f.read(key).unwrap().into_tensor(&Default::default()) };
    for (net, name) in [(LpipsNet::Alex, "alex"), (LpipsNet::Vgg, "vgg")] {
        let ours: Vec<f32> = tiny(net, name)
            .distance(input("in0"), input("in1"))
            .unwrap()
            .into_data()
            .into_vec()
            .unwrap();
        let theirs = f.read(&format!("{name}_distance")).unwrap().data;
        let scale = theirs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for (a, b) in ours.iter().zip(&theirs) {
            assert!(
                (a - b).abs() <= 1e-5 * scale,
                "{name}: {ours:?} vs {theirs:?}"
            );
        }
        // Pairs: (x, x), (x, x + noise), (x, x mirrored).
        assert_eq!(ours[0], 0.0, "{name}: LPIPS(x, x)");
        assert!(ours[1] > 0.0 && ours[2] > 0.0, "{name}: {ours:?}");
    }
}

#[test]
fn lpips_grows_with_the_noise() {
    let f = SafetensorsFile::open(&fixture("lpips.safetensors")).unwrap();
    let x: Tensor<B, 4> = f.read("in0").unwrap().into_tensor(&Default::default());
    let x = x.narrow(0, 0, 1);
    let lpips = tiny(LpipsNet::Alex, "alex");
    <B as Backend>::seed(&Default::default(), 3);
    let noise = x.random_like(burn::tensor::Distribution::Normal(0.0, 1.0));
    let distances: Vec<f32> = [0.05, 0.2, 0.8]
        .into_iter()
        .map(|s| {
            let noisy = (x.clone() + noise.clone() * s).clamp(-1.0, 1.0);
            lpips.distance(x.clone(), noisy).unwrap().into_scalar()
        })
        .collect();
    assert!(
        distances[0] < distances[1] && distances[1] < distances[2],
        "{distances:?}"
    );
}

#[test]
fn the_packages_lin_files_fit_the_real_widths_and_bad_inputs_are_errors() {
    // The real lin layers need the real backbone: with the narrow one the widths disagree, named.
    let narrow = fixture("lpips_alex_tiny_weights.safetensors");
    let err = Lpips::<B>::load(
        LpipsNet::Alex,
        &narrow,
        fixture("lpips_alex_lin.safetensors"),
        &Default::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("lin0.model.1.weight"), "{err}");
    for (name, widths) in [
        ("alex", [64, 192, 384, 256, 256]),
        ("vgg", [64, 128, 256, 512, 512]),
    ] {
        let lins =
            SafetensorsFile::open(&fixture(&format!("lpips_{name}_lin.safetensors"))).unwrap();
        for (i, c) in widths.into_iter().enumerate() {
            let t = lins.read(&format!("lin{i}.model.1.weight")).unwrap();
            assert_eq!(t.shape, [1, c, 1, 1], "{name} lin{i}");
            assert!(
                t.data.iter().all(|w| *w >= 0.0),
                "{name} lin{i}: trained weights are ≥ 0"
            );
        }
    }
    // A VGG file read as AlexNet names the key it lacks.
    let vgg = fixture("lpips_vgg_tiny_weights.safetensors");
    assert!(Lpips::<B>::load(LpipsNet::Alex, &vgg, &vgg, &Default::default()).is_err());
    let lpips = tiny(LpipsNet::Alex, "alex");
    let a = Tensor::<B, 4>::zeros([1, 3, 64, 64], &Default::default());
    let b = Tensor::<B, 4>::zeros([1, 3, 64, 48], &Default::default());
    assert!(matches!(lpips.distance(a, b), Err(EvalError::Mismatch(_))));
}
