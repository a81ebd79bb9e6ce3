//! The `premier generate` command line: argument parsing, model-folder resolution, user specs.

use std::path::PathBuf;

use clap::Parser;
use premier::pipeline::UserChoice;
use premier::users::UserRef;
use premier::{resolve_user, PremierError, User};
use premier_cli::{Cli, Command, GenerateArgs};

fn parse(args: &[&str]) -> GenerateArgs {
    let mut full = vec!["premier", "generate"];
    full.extend_from_slice(args);
    match Cli::try_parse_from(full).unwrap().command {
        Command::Generate(g) => g,
        other => panic!("parsed as {other:?}"),
    }
}

#[test]
fn model_dir_gives_every_part_and_flags_override() {
    let args = parse(&[
        "--model-dir",
        "/m/FLUX.1-dev",
        "--ae",
        "/x/ae.safetensors",
        "--prompt",
        "a",
        "--prompt",
        "b",
    ]);
    let files = args.model.files().unwrap();
    assert_eq!(files.flux, PathBuf::from("/m/FLUX.1-dev/transformer"));
    assert_eq!(files.ae, PathBuf::from("/x/ae.safetensors"));
    assert_eq!(files.t5, PathBuf::from("/m/FLUX.1-dev/text_encoder_2"));
    assert_eq!(files.clip, PathBuf::from("/m/FLUX.1-dev/text_encoder"));
    assert_eq!(
        files.t5_tokenizer, None,
        "no tokenizer.json there: the shipped one is used"
    );
    assert_eq!(args.prompts, vec!["a", "b"]);
    assert_eq!(
        (args.width, args.height, args.steps, args.alpha),
        (None, None, None, 1.0)
    );
    // α may be negative without `=`; NaN and infinities are refused by name.
    assert_eq!(parse(&["--prompt", "a", "--alpha", "-1"]).alpha, -1.0);
    for bad in ["NaN", "inf", "-inf"] {
        let err = Cli::try_parse_from(["premier", "generate", "--prompt", "a", "--alpha", bad])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--alpha") && err.contains("not a finite number"),
            "{err}"
        );
    }
    let err = Cli::try_parse_from(["premier", "generate", "--prompt", "a", "--guidance", "nan"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("--guidance"), "{err}");

    let err = parse(&["--prompt", "a"]).model.files().unwrap_err();
    assert!(err.to_string().contains("--model-dir"), "{err}");
    assert!(
        Cli::try_parse_from(["premier", "generate"]).is_err(),
        "a prompt is required"
    );
}

#[test]
fn user_specs() {
    assert_eq!(User::parse("base"), User::Base);
    assert_eq!(User::parse("17"), User::Row(17));
    assert_eq!(User::parse("alice"), User::Id("alice".into()));
    assert_eq!(
        User::parse("users/new.safetensors"),
        User::File("users/new.safetensors".into())
    );
    // Files resolve to their kind by what they hold.
    let dir = tempfile::tempdir().unwrap();
    let device = Default::default();
    let combo = premier::users::LinearCombination::<burn::backend::Flex>::init(4, &device);
    let path = dir.path().join("user_combination_3.safetensors");
    combo.save(&path, premier::io::SaveDtype::F32).unwrap();
    assert_eq!(
        resolve_user(&User::parse(path.to_str().unwrap()), None).unwrap(),
        UserChoice::User(UserRef::CombinationFile(path))
    );
    let user = premier::users::UserEmbedding::<burn::backend::Flex>::init_direct(2, 3, &device);
    let path = dir.path().join("user_embedding_3.safetensors");
    user.save(&path, premier::io::SaveDtype::Bf16).unwrap();
    assert_eq!(
        resolve_user(&User::parse(path.to_str().unwrap()), None).unwrap(),
        UserChoice::User(UserRef::EmbeddingFile(path))
    );
    let err = resolve_user(&User::parse("/no/such/user.safetensors"), None).unwrap_err();
    assert!(
        err.to_string().contains("/no/such/user.safetensors"),
        "{err}"
    );
    // An id without a run to look it up in says where ids come from.
    let err = resolve_user(&User::parse("alice"), None).unwrap_err();
    assert!(
        matches!(&err, PremierError::UnknownUser { user, .. } if user == "alice")
            && err.to_string().contains("premier.json beside the adapter"),
        "{err}"
    );
}

#[test]
fn missing_model_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let args = parse(&[
        "--model-dir",
        dir.path().to_str().unwrap(),
        "--prompt",
        "a",
        "--steps",
        "1",
    ]);
    let err = premier_cli::run_generate(args).unwrap_err();
    assert!(format!("{err:#}").contains("transformer"), "{err:#}");
}

#[test]
fn synth_export_writes_a_dataset_the_readers_parse() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("world");
    let cli = Cli::try_parse_from([
        "premier",
        "synth",
        "export",
        "--out",
        out.to_str().unwrap(),
        "--seed",
        "3",
        "--train-users",
        "2",
        "--new-users",
        "1",
        "--images-per-user",
        "4",
    ])
    .unwrap();
    let Command::Synth(args) = cli.command else {
        panic!("not a synth command")
    };
    premier_cli::synth::run(args).unwrap();
    let data =
        premier::train::data::Dataset::from_jsonl(&out.join("manifest.jsonl"), &Default::default())
            .unwrap();
    assert_eq!(data.users.len(), 3);
    assert!(data.users.iter().all(|u| u.samples.len() == 4));
}
