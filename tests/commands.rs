//! The `premier` commands end to end, as a user runs them: on the synthetic world exported by
//! `premier synth export` (with the shipped base model), and on a tiny FLUX.1 model written as a
//! diffusers folder (random transformer, reference VAE/T5/CLIP fixtures, word-level tokenizers).

use std::path::Path;

mod common;
use common::{
    clip_folder, encoded_synth_world, largest_relative_gap, premier, s, sha, synth_base,
    tiny_model_dir,
};

/// Both tests train in this process, and a fresh run seeds and draws from Flex's global
/// generator: run at once, one test's draws would land inside the other's seeded init.
static IN_PROCESS_RUNS: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn the_synthetic_world_runs_through_every_command() {
    let _alone = IN_PROCESS_RUNS.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (world, cache) = encoded_synth_world(dir.path(), 4, 6);
    let base = synth_base();
    let index = std::fs::read_to_string(cache.join("index.json")).unwrap();
    assert!(index.contains("images-00000.safetensors"));

    // Stage 1: 4 steps straight, and 2 + resume 2; a TOML file sets what the flags do not.
    let config = dir.path().join("train.toml");
    let run_toml = "batch_size = 3\nvalidation_users = 2\n[stage1]\nseed = 5\n";
    let write_config = |text: &str| std::fs::write(&config, text).unwrap();
    write_config(run_toml);
    let train = world.join("train.jsonl");
    let train_run = |out: &Path, steps: &str, extra: &[&str]| {
        let mut args = vec![
            "train",
            "--synth-base",
            s(&base),
            "--data",
            s(&train),
            "--cache",
            s(&cache),
            "--out",
            s(out),
            "--config",
            s(&config),
            "--steps",
            steps,
            "--checkpoint-every",
            "2",
            "--validate-every",
            "2",
        ];
        args.extend_from_slice(extra);
        premier(&args)
    };
    let (straight, resumed) = (dir.path().join("straight"), dir.path().join("resumed"));
    train_run(&straight, "4", &[]).unwrap();
    train_run(&resumed, "2", &[]).unwrap();
    train_run(&resumed, "4", &["--resume", "latest"]).unwrap();
    // Gradient checkpointing recomputes the same activations: the same weights.
    let recomputed = dir.path().join("recomputed");
    train_run(&recomputed, "4", &["--gradient-checkpointing"]).unwrap();
    for file in ["mod_adapter.safetensors", "user_embedding.safetensors"] {
        assert_eq!(
            sha(&straight.join(file)),
            sha(&resumed.join(file)),
            "{file}"
        );
        assert_eq!(
            sha(&straight.join(file)),
            sha(&recomputed.join(file)),
            "{file}"
        );
    }
    // `--resume-or-start` starts fresh, then resumes.
    let empty = dir.path().join("empty");
    train_run(&empty, "2", &["--resume-or-start"]).unwrap();
    train_run(&empty, "4", &["--resume-or-start"]).unwrap();
    assert_eq!(
        sha(&empty.join("mod_adapter.safetensors")),
        sha(&straight.join("mod_adapter.safetensors"))
    );
    assert!(straight.join("validation/step-00000004.png").is_file());
    assert!(straight.join("loss.png").is_file());
    // Three CPU peers split each batch of 3 and step as the one device did, in stretches
    // between validations and checkpoints.
    let peers = dir.path().join("peers");
    train_run(&peers, "4", &["--devices", "cpu:3"]).unwrap();
    assert!(peers.join("validation/step-00000002.png").is_file());
    for file in ["mod_adapter.safetensors", "user_embedding.safetensors"] {
        let gap = largest_relative_gap(&straight.join(file), &peers.join(file));
        assert!(gap <= 1e-6, "{file}: {gap:e}");
    }
    let bad = train_run(&dir.path().join("bad"), "2", &["--devices", "cuda:0"]).unwrap_err();
    assert!(format!("{bad:#}").contains("--backend cuda"), "{bad:#}");
    let metrics = premier::train::metrics::read_metrics(&resumed.join("metrics.jsonl")).unwrap();
    assert_eq!(
        metrics.iter().map(|m| m.report.step).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );

    // Cold start of the new user from 2 images, 3 steps straight and 2 + resume 1; the stage-1
    // table is untouched.
    let table_before = sha(&straight.join("user_embedding.safetensors"));
    let new_users = world.join("new_users.jsonl");
    // A cold start of `data`'s users from 2 images each, `steps` steps, into `out`.
    let cold_start = |data: &Path, out: &Path, steps: &str, extra: &[&str]| {
        let mut args = vec![
            "cold-start",
            "--synth-base",
            s(&base),
            "--data",
            s(data),
            "--cache",
            s(&cache),
            "--run",
            s(&straight),
            "--images",
            "2",
            "--steps",
            steps,
            "--out",
            s(out),
        ];
        args.extend_from_slice(extra);
        premier(&args).unwrap();
    };
    let cold = |out: &Path, steps: &str, extra: &[&str]| {
        let mut args = vec!["--checkpoint-every", "1"];
        args.extend_from_slice(extra);
        cold_start(&new_users, out, steps, &args);
        out.join("user_combination_new004.safetensors")
    };
    let user_file = cold(&straight.join("users"), "3", &[]);
    cold(&dir.path().join("cold"), "2", &[]);
    let resumed_user = cold(&dir.path().join("cold"), "3", &["--resume", "latest"]);
    assert_eq!(sha(&user_file), sha(&resumed_user));
    // A direct cold start of the same user in the same folder keeps its own checkpoints.
    cold(&dir.path().join("cold"), "2", &["--kind", "direct"]);
    assert!(dir
        .path()
        .join("cold/user_embedding_new004.safetensors")
        .is_file());
    let cold_metrics = dir
        .path()
        .join("cold/metrics_user_combination_new004.jsonl");
    let steps: Vec<u64> = premier::train::metrics::read_metrics(&cold_metrics)
        .unwrap()
        .iter()
        .map(|m| m.report.step)
        .collect();
    assert_eq!(steps, vec![1, 2, 3]);
    assert_eq!(
        sha(&straight.join("user_embedding.safetensors")),
        table_before
    );
    // Three users fitted one after another, and two at a time on two CPU peers: the same files.
    let several = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "--user", "user000", "--user", "user001", "--user", "user002",
        ];
        args.extend_from_slice(extra);
        cold_start(&train, out, "2", &args);
    };
    let (in_turn, at_once) = (dir.path().join("in-turn"), dir.path().join("at-once"));
    several(&in_turn, &[]);
    several(&at_once, &["--devices", "cpu:2"]);
    for user in ["user000", "user001", "user002"] {
        let file = format!("user_combination_{user}.safetensors");
        assert_eq!(
            sha(&in_turn.join(&file)),
            sha(&at_once.join(&file)),
            "{user}"
        );
    }

    // Generate: base, a trained user, the new user; scored with the tiny CLIP.
    let gen = dir.path().join("gen");
    let clip = dir.path().join("clip");
    clip_folder(&clip);
    premier(&[
        "generate",
        "--synth-base",
        s(&base),
        "--adapter",
        s(&straight.join("mod_adapter.safetensors")),
        "--user-table",
        s(&straight.join("user_embedding.safetensors")),
        "--user",
        "base",
        "--user",
        "user001",
        "--user",
        s(&user_file),
        "--prompt",
        "a small circle on the left",
        "--prompt",
        "a large square",
        "--out",
        s(&gen),
        "--eval",
        s(&clip),
    ])
    .unwrap();
    let grid = image::open(gen.join("grid.png")).unwrap();
    assert!(grid.height() > 3 * 32, "three rows");
    // `--eval` scored every image with its prompt (the tiny CLIP: the numbers mean nothing).
    let eval: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(gen.join("eval.json")).unwrap()).unwrap();
    let rows = eval["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    for row in rows {
        let cos = row["clip_t2i"].as_array().unwrap();
        assert_eq!(cos.len(), 2, "{row}");
        assert!(
            cos.iter().all(|c| c.as_f64().unwrap().abs() <= 1.0),
            "{row}"
        );
    }
    assert!(std::fs::read_to_string(gen.join("eval.md"))
        .unwrap()
        .contains("| user2 |"));
}

#[test]
fn flux_files_encode_train_and_cold_start() {
    let _alone = IN_PROCESS_RUNS.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model_dir(dir.path());
    // A folder dataset: two users, photos of other sizes than the training resolution.
    let data = dir.path().join("data");
    for (u, colour) in [("alice", [200u8, 30, 30]), ("bob", [30, 30, 200])] {
        std::fs::create_dir_all(data.join(u)).unwrap();
        for i in 0..3u32 {
            let img = image::RgbImage::from_fn(40 + 8 * i, 36, |x, y| {
                let on = (x / 6 + y / 6 + i) % 2 == 0;
                image::Rgb(if on { colour } else { [240, 240, 240] })
            });
            img.save(data.join(u).join(format!("{i}.png"))).unwrap();
            let caption = if i % 2 == 0 {
                "a red circle"
            } else {
                "a blue square"
            };
            std::fs::write(data.join(u).join(format!("{i}.txt")), caption).unwrap();
        }
    }
    // A third user whose only image is damaged: an error naming it, or skipped with --skip-bad.
    std::fs::create_dir_all(data.join("carol")).unwrap();
    std::fs::write(data.join("carol/0.png"), b"not a png").unwrap();
    std::fs::write(data.join("carol/0.txt"), "a red circle").unwrap();
    let cache = dir.path().join("cache");
    let strict = premier(&[
        "encode",
        "--model-dir",
        s(&model),
        "--data",
        s(&data),
        "--cache",
        s(&cache),
    ]);
    let msg = format!("{:#}", strict.unwrap_err());
    assert!(msg.contains("carol/0.png"), "{msg}");
    let common = [
        "--model-dir",
        s(&model),
        "--data",
        s(&data),
        "--cache",
        s(&cache),
        "--skip-bad",
    ];
    let with = |cmd: &str, extra: &[&str]| {
        let mut args = vec![cmd];
        args.extend_from_slice(&common);
        args.extend_from_slice(extra);
        premier(&args)
    };
    let encode_toml = dir.path().join("encode.toml");
    std::fs::write(
        &encode_toml,
        "resolution = 32\nprompts = [\"a red square\"]\n",
    )
    .unwrap();
    with(
        "encode",
        &["--config", s(&encode_toml), "--batch-size", "2"],
    )
    .unwrap();
    // Entries at another resolution are never mixed into this cache: refused, saying which part.
    let err = format!("{:#}", with("encode", &["--resolution", "64"]).unwrap_err());
    assert!(err.contains("its images were encoded by"), "{err}");
    assert!(
        err.contains("at 32×32 px") && err.contains("at 64×64 px"),
        "{err}"
    );
    // Nor entries preprocessed another way (centre-cropped instead of resized).
    let err = format!(
        "{:#}",
        with("encode", &["--resolution", "32", "--center-crop"]).unwrap_err()
    );
    assert!(err.contains("centre-cropped"), "{err}");
    // Image sides the autoencoder and FLUX cannot take, or no machine could hold, are refused
    // before anything is allocated.
    for side in ["40", "0", "65536"] {
        let err = format!("{:#}", with("encode", &["--resolution", side]).unwrap_err());
        assert!(
            err.contains(&format!("resolution {side}: the image side must be")),
            "{err}"
        );
    }
    let mut opened = premier::train::cache::EncodedCache::open(&cache, false).unwrap();
    assert_eq!(opened.index.images.len(), 6);
    assert_eq!(
        opened.index.captions.len(),
        4,
        "two captions, the empty prompt, one extra"
    );
    let any = opened.index.images.keys().next().unwrap().clone();
    let latent = opened.latent(&any).unwrap();
    assert_eq!(
        latent.mean.shape,
        vec![16, 16, 16],
        "the tiny VAE halves 32² pixels"
    );
    drop(opened);

    let run = dir.path().join("run");
    with("train", &[
        "--out", s(&run), "--steps", "2", "--batch-size", "2", "--grad-accum", "2",
        "--checkpoint-every", "1", "--keep-checkpoints", "1", "--validate-every", "2",
        "--resolution", "32", "--backbone-dtype", "bf16", "--config", s(&{
            let p = dir.path().join("t.toml");
            std::fs::write(&p, "user_tokens = 2\nuser_dim = 8\nadapter_width = 16\nadapter_heads = 2\nadapter_layers = 1\nvalidation_prompts = [\"a red square\"]\n").unwrap();
            p
        }),
    ]).unwrap();
    // The synth base cannot train on latents encoded for FLUX: refused, naming the cache.
    let other_model = dir.path().join("other-model");
    let err = premier(&[
        "train",
        "--synth-base",
        s(&synth_base()),
        "--data",
        s(&data),
        "--cache",
        s(&cache),
        "--skip-bad",
        "--out",
        s(&other_model),
        "--steps",
        "1",
    ])
    .unwrap_err();
    let err = format!("{err:#}");
    assert!(
        err.contains("the cache was encoded for another model") && err.contains(s(&cache)),
        "{err}"
    );
    let checkpoints = premier::train::checkpoint::checkpoints(&run.join("checkpoints"));
    assert_eq!(checkpoints.len(), 1, "keep 1");
    assert_eq!(checkpoints[0].0, 2);
    assert!(run.join("validation/step-00000002.png").is_file());
    // The backbone ran in bf16, the trained parts in f32: finite losses and weights.
    let metrics = premier::train::metrics::read_metrics(&run.join("metrics.jsonl")).unwrap();
    assert!(metrics
        .iter()
        .all(|m| m.report.loss.is_finite() && m.report.grad_norm > 0.0));
    let adapter = premier::io::SafetensorsFile::open(&run.join("mod_adapter.safetensors")).unwrap();
    let key = adapter.keys().next().unwrap().to_string();
    assert!(adapter.read(&key).is_ok());
    with(
        "cold-start",
        &[
            "--run",
            s(&run),
            "--user",
            "bob",
            "--kind",
            "direct",
            "--steps",
            "2",
        ],
    )
    .unwrap();
    assert!(run.join("users/user_embedding_bob.safetensors").is_file());

    // Generation with every model loaded, and one model at a time: the same images.
    let (adapter, table) = (
        run.join("mod_adapter.safetensors"),
        run.join("user_embedding.safetensors"),
    );
    let try_generate = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "generate",
            "--model-dir",
            s(&model),
            "--adapter",
            s(&adapter),
            "--user-table",
            s(&table),
            "--user",
            "base",
            "--user",
            "alice",
            "--prompt",
            "a red square",
            "--prompt",
            "a blue square",
            "--width",
            "32",
            "--height",
            "32",
            "--steps",
            "2",
            "--out",
            s(out),
        ];
        args.extend_from_slice(extra);
        premier(&args)
    };
    let generate = |out: &Path, extra: &[&str]| try_generate(out, extra).unwrap();
    // A memory limit below the estimate is refused before anything is loaded or written.
    let refused = dir.path().join("refused");
    let err = try_generate(&refused, &["--max-memory", "0.0001"]).unwrap_err();
    assert!(
        err.to_string().contains("exceeds --max-memory (0.1 MiB)"),
        "{err}"
    );
    assert!(!refused.exists());
    // Sizes and steps no machine could run are refused, naming the flag, before the memory
    // estimate multiplies them (it overflowed) and before anything is loaded.
    for (flag, value) in [
        ("--width", "4294967295"),
        ("--height", "100000"),
        ("--steps", "18446744073709551615"),
    ] {
        let err = premier(&[
            "generate",
            "--model-dir",
            s(&model),
            "--prompt",
            "a red square",
            flag,
            value,
            "--out",
            s(&refused),
        ])
        .unwrap_err();
        assert!(
            err.to_string().contains(&format!("{flag} {value}")),
            "{err}"
        );
    }
    assert!(!refused.exists());
    // A trained user without the table to look it up in names the missing flag.
    let mut no_table = vec![
        "generate",
        "--model-dir",
        s(&model),
        "--adapter",
        s(&adapter),
    ];
    no_table.extend([
        "--user",
        "alice",
        "--prompt",
        "a red square",
        "--out",
        s(&refused),
    ]);
    let err = format!("{:#}", premier(&no_table).unwrap_err());
    assert!(err.contains("--user alice needs --user-table"), "{err}");
    let (resident, staged) = (dir.path().join("resident"), dir.path().join("staged"));
    generate(&resident, &[]);
    generate(&staged, &["--low-memory"]);
    for file in ["grid.png", "user1_prompt0.png", "user1_prompt1.png"] {
        assert_eq!(sha(&resident.join(file)), sha(&staged.join(file)), "{file}");
    }
    // Alice's row differs from the base row: Δ reached FLUX in the staged run too.
    assert_ne!(
        sha(&staged.join("user0_prompt0.png")),
        sha(&staged.join("user1_prompt0.png"))
    );
    // bf16 adapters still draw (their Δ is within 3e-2 of f32's; the parity test checks that).
    let half = dir.path().join("half");
    // The largest seed with two prompts: per-image seeds wrap instead of overflowing.
    generate(
        &half,
        &[
            "--low-memory",
            "--adapter-dtype",
            "bf16",
            "--seed",
            "18446744073709551615",
        ],
    );
    assert!(half.join("grid.png").is_file());
    // The VAE decoding in tiles (2 × 2 here) draws images of the same size.
    let tiled = dir.path().join("tiled");
    generate(&tiled, &["--low-memory", "--vae-tile", "10"]);
    let (a, b) = (
        image::open(tiled.join("grid.png")).unwrap(),
        image::open(staged.join("grid.png")).unwrap(),
    );
    assert_eq!((a.width(), a.height()), (b.width(), b.height()));
}
