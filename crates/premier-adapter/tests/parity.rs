//! Parity with the official `CLIPModAdapter_2` (fixture `adapter_small`): the released key layout,
//! every intermediate and both Δ. Tolerance atol 1e-5 (fixture README; observed by an independent
//! re-implementation: 1.3e-6).

use std::path::PathBuf;

use burn::backend::Flex;
use burn::prelude::*;
use premier_adapter::{AdapterConfig, PreferenceAdapter};
use premier_mmdit::load::SafetensorsFile;

type B = Flex;
const ATOL: f32 = 1e-5;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

fn tensor<const D: usize>(f: &SafetensorsFile, key: &str) -> Tensor<B, D> {
    f.read(key).unwrap().into_tensor(&Default::default())
}

fn assert_close<const D: usize>(what: &str, got: Tensor<B, D>, want: Tensor<B, D>) {
    assert_eq!(got.dims(), want.dims(), "{what}");
    let diff = (got - want).abs().max().into_scalar();
    eprintln!("{what}: max |diff| = {diff:e}");
    assert!(diff <= ATOL, "{what}: max |diff| = {diff:e}");
}

/// The fixture's constructor: width 32, 8 heads, 3 layers, text 32, user tokens of 8, 2 blocks.
pub fn fixture_config() -> AdapterConfig {
    AdapterConfig {
        text_dim: 32,
        user_dim: 8,
        width: 32,
        heads: 8,
        layers: 3,
        hidden: 32,
        blocks: 2,
        shared: true,
        distinct: true,
    }
}

#[test]
fn deltas_match_official_adapter() {
    let f = SafetensorsFile::open(&fixture("adapter_small.safetensors")).unwrap();
    let adapter = PreferenceAdapter::<B>::load(
        fixture("adapter_small_weights.safetensors"),
        &fixture_config(),
        &Default::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let delta = adapter.forward(tensor(&f, "text"), tensor(&f, "user"));
    assert_close(
        "delta_shared",
        delta.shared.unwrap(),
        tensor(&f, "delta_shared"),
    );
    assert_close(
        "delta_distinct",
        delta.distinct.unwrap(),
        tensor(&f, "delta_distinct"),
    );
}

#[test]
fn intermediates_match_official_adapter() {
    let f = SafetensorsFile::open(&fixture("adapter_small.safetensors")).unwrap();
    let adapter = PreferenceAdapter::<B>::load(
        fixture("adapter_small_weights.safetensors"),
        &fixture_config(),
        &Default::default(),
    )
    .unwrap();
    for (name, net) in [
        ("net", adapter.net.as_ref().unwrap()),
        ("net2", adapter.net2.as_ref().unwrap()),
    ] {
        let text = net.text_proj_in.forward(tensor(&f, "text"));
        let user = net.image_proj_in.forward(tensor(&f, "user"));
        assert_close(
            &format!("{name}_text_proj_in"),
            text.clone(),
            tensor(&f, &format!("{name}_text_proj_in")),
        );
        assert_close(
            &format!("{name}_image_proj_in"),
            user.clone(),
            tensor(&f, &format!("{name}_image_proj_in")),
        );
        let mut x = text;
        for (k, block) in net.perceiver_blocks.iter().enumerate() {
            x = block.forward(x, user.clone());
            assert_close(
                &format!("{name}_block{k}_out"),
                x.clone(),
                tensor(&f, &format!("{name}_block{k}_out")),
            );
        }
        let out = net.forward(tensor(&f, "text"), tensor(&f, "user"));
        assert_close(
            &format!("{name}_proj_out"),
            out,
            tensor(&f, &format!("{name}_proj_out")),
        );
    }
}
