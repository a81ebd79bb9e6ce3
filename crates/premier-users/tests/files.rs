//! Round trips of every user file format and the errors for bad ones.

use std::collections::HashMap;
use std::path::Path;

use burn::backend::Flex;
use burn::prelude::*;
use premier_io::LoadError;
use premier_io::SaveDtype;
use premier_users::{
    LinearCombination, TableRows, UserEmbedding, UserError, UserRef, UserShape, UserTable,
};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

type B = Flex;
const SHAPE: UserShape = UserShape {
    users: 6,
    tokens: 3,
    dim: 4,
};

fn values<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().to_vec().unwrap()
}

fn write_f32(path: &Path, tensors: &[(&str, Vec<usize>, Vec<f32>)]) {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views: HashMap<String, TensorView> = tensors
        .iter()
        .zip(&bytes)
        .map(|((k, s, _), b)| {
            (
                k.to_string(),
                TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

#[test]
fn table_round_trips_in_f32_and_bf16_and_keeps_its_extra_row() {
    let device = Default::default();
    let dir = tempfile::tempdir().unwrap();
    let table = UserTable::<B>::init(SHAPE, &device);
    let path = dir.path().join("user_embedding.safetensors");
    table.save(&path, SaveDtype::F32).unwrap();
    let back = UserTable::<B>::load(&path, SHAPE, &device).unwrap();
    assert_eq!(values(back.weight.val()), values(table.weight.val()));
    assert_eq!(back.rows(), TableRows::Users);

    table.save(&path, SaveDtype::Bf16).unwrap();
    let back = UserTable::<B>::load(&path, SHAPE, &device).unwrap();
    for (a, b) in values(back.weight.val())
        .iter()
        .zip(values(table.weight.val()))
    {
        assert_eq!(*a, half::bf16::from_f32(b).to_f32());
    }

    // The stage-1 code's layout: users + 1 rows.
    let rows = Tensor::<B, 2>::ones([SHAPE.users + 1, 12], &device);
    let stage1 = UserTable::from_weight(rows, SHAPE, TableRows::UsersPlusOne);
    stage1.save(&path, SaveDtype::F32).unwrap();
    let back = UserTable::<B>::load(&path, SHAPE, &device).unwrap();
    assert_eq!(back.rows(), TableRows::UsersPlusOne);
    assert_eq!(back.weight.dims(), [SHAPE.users + 1, 12]);
    assert_eq!(back.user_rows().dims(), [SHAPE.users, 12]);
    assert!(matches!(
        back.lookup(&[6]),
        Err(UserError::UnknownUser { id: 6, users: 6 })
    ));
}

#[test]
fn lookup_returns_the_rows_asked_for() {
    let device = Default::default();
    let weight = Tensor::<B, 1, Int>::arange(0..(SHAPE.users * 12) as i64, &device)
        .float()
        .reshape([SHAPE.users, 12]);
    let table = UserTable::from_weight(weight, SHAPE, TableRows::Users);
    let got = values(table.lookup(&[4, 1, 4]).unwrap());
    let want: Vec<f32> = [4, 1, 4]
        .iter()
        .flat_map(|&u| (0..12).map(move |c| (u * 12 + c) as f32))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn embedding_and_combination_files_round_trip_and_resolve() {
    let device = Default::default();
    let dir = tempfile::tempdir().unwrap();
    let table = UserTable::<B>::init(SHAPE, &device);

    let user = UserEmbedding::<B>::init_direct(3, 4, &device);
    let emb_path = dir.path().join("user_embedding_7.safetensors");
    user.save(&emb_path, SaveDtype::F32).unwrap();
    let back = UserRef::EmbeddingFile(emb_path.clone())
        .resolve(&table)
        .unwrap();
    assert_eq!(values(back), values(user.embedding()));

    let combo = LinearCombination::<B>::init(SHAPE.users, &device);
    let combo_path = dir.path().join("user_combination_7.safetensors");
    combo.save(&combo_path, SaveDtype::F32).unwrap();
    let resolved = values(
        UserRef::CombinationFile(combo_path)
            .resolve(&table)
            .unwrap(),
    );
    // w · table, by hand.
    let w = values(combo.weights.val());
    let rows = values(table.weight.val());
    for (c, got) in resolved.iter().enumerate() {
        let want: f32 = (0..SHAPE.users).map(|u| w[u] * rows[u * 12 + c]).sum();
        assert!((got - want).abs() < 1e-6);
    }
    assert_eq!(
        values(UserRef::Index(2).resolve(&table).unwrap()),
        values(table.lookup(&[2]).unwrap())
    );
    // Xavier bound √(6/7) for 6 users.
    assert!(w.iter().all(|v| v.abs() <= (6.0f32 / 7.0).sqrt()));
}

#[test]
fn embedding_files_accept_the_official_shapes() {
    let device = Default::default();
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<f32> = (0..12).map(|i| i as f32).collect();
    for (key, shape) in [
        ("weight", vec![1, 12]),
        ("weight", vec![12]),
        ("emb", vec![3, 4]),
        ("weight", vec![1, 3, 4]),
    ] {
        let path = dir.path().join("u.safetensors");
        write_f32(&path, &[(key, shape.clone(), data.clone())]);
        let user = UserEmbedding::<B>::load(&path, 3, 4, &device)
            .unwrap_or_else(|e| panic!("{shape:?}: {e}"));
        assert_eq!(values(user.tokens.val()), data);
    }
}

#[test]
fn bad_files_name_the_problem() {
    let device = Default::default();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.safetensors");

    write_f32(&path, &[("weight", vec![5, 12], vec![0.0; 60])]);
    match UserTable::<B>::load(&path, SHAPE, &device) {
        Err(UserError::WrongShape { key, found, .. }) => {
            assert_eq!((key.as_str(), found), ("weight", vec![5, 12]))
        }
        other => panic!("{other:?}"),
    }
    write_f32(&path, &[("embedding", vec![6, 12], vec![0.0; 72])]);
    let err = UserTable::<B>::load(&path, SHAPE, &device).unwrap_err();
    assert!(
        matches!(err, UserError::MissingKey { ref found, .. } if found == "embedding"),
        "{err}"
    );

    let mut nan = vec![0.0; 72];
    nan[13] = f32::NAN;
    write_f32(&path, &[("weight", vec![6, 12], nan)]);
    match UserTable::<B>::load(&path, SHAPE, &device) {
        Err(UserError::File(LoadError::NonFinite { key, path: p })) => {
            assert_eq!((key.as_str(), p), ("weight", path.clone()))
        }
        other => panic!("{other:?}"),
    }

    write_f32(&path, &[("combination_weights", vec![1, 5], vec![0.0; 5])]);
    assert!(matches!(
        LinearCombination::<B>::load(&path, 6, &device),
        Err(UserError::WrongShape { .. })
    ));
    write_f32(&path, &[("weight", vec![1, 11], vec![0.0; 11])]);
    assert!(matches!(
        UserEmbedding::<B>::load(&path, 3, 4, &device),
        Err(UserError::WrongShape { .. })
    ));
    write_f32(
        &path,
        &[
            ("a", vec![12], vec![0.0; 12]),
            ("b", vec![12], vec![0.0; 12]),
        ],
    );
    assert!(matches!(
        UserEmbedding::<B>::load(&path, 3, 4, &device),
        Err(UserError::MissingKey { .. })
    ));
    let missing = dir.path().join("nope.safetensors");
    assert!(matches!(
        UserRef::EmbeddingFile(missing).resolve(&UserTable::<B>::init(SHAPE, &device)),
        Err(UserError::File(LoadError::Io { .. }))
    ));
}

#[test]
fn saving_replaces_atomically_and_leaves_no_temporary_files() {
    let device = Default::default();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("user_embedding.safetensors");
    let table = UserTable::<B>::init(SHAPE, &device);
    table.save(&path, SaveDtype::F32).unwrap();
    table.save(&path, SaveDtype::F32).unwrap();
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from("user_embedding.safetensors")]
    );
    // A target in a folder that does not exist is an error naming the file, not a panic.
    let err = table
        .save(dir.path().join("missing/t.safetensors"), SaveDtype::F32)
        .unwrap_err();
    assert!(err.to_string().contains("missing/t.safetensors"), "{err}");
}
