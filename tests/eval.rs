//! `premier eval` end to end on the tiny CLIP and LPIPS fixtures (random weights: the numbers
//! mean nothing about images; the command's files, rows and refusals are what is checked).

use std::path::Path;

mod common;
use common::{clip_folder, fixture, premier, s};

/// `<root>/<user>/<k>.png` for two users and two prompts, each a transform of the photo.
fn images(root: &Path, transform: impl Fn(&image::RgbImage, usize) -> image::RgbImage) {
    let photo = image::open(fixture("images/chelsea.png"))
        .unwrap()
        .to_rgb8();
    let photo = image::imageops::resize(&photo, 48, 32, image::imageops::FilterType::Triangle);
    for (u, user) in ["ann", "ben"].into_iter().enumerate() {
        std::fs::create_dir_all(root.join(user)).unwrap();
        for k in 0..2 {
            transform(&photo, u * 2 + k)
                .save(root.join(user).join(format!("{k}.png")))
                .unwrap();
        }
    }
}

#[test]
fn eval_writes_the_report_and_refuses_to_overwrite_it() {
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("clip");
    clip_folder(&clip);
    let shade = |p: &image::RgbImage, i: usize| {
        let mut q = p.clone();
        q.pixels_mut()
            .for_each(|px| px.0[i % 3] = px.0[i % 3].saturating_add(40));
        q
    };
    images(&dir.path().join("generated"), shade);
    images(&dir.path().join("base"), |p, _| {
        image::imageops::flip_horizontal(p)
    });
    images(&dir.path().join("reference"), |p, _| p.clone());
    let prompts = dir.path().join("prompts.txt");
    std::fs::write(&prompts, "a red circle\na blue square on grass\n").unwrap();
    let lpips = fixture("lpips_alex_tiny_weights.safetensors");
    let out = dir.path().join("report");
    let (generated, reference, base) = (
        dir.path().join("generated"),
        dir.path().join("reference"),
        dir.path().join("base"),
    );
    let args = |extra: &[&str]| {
        let mut a = vec![
            "eval",
            "--clip",
            s(&clip),
            "--generated",
            s(&generated),
            "--reference",
            s(&reference),
            "--base",
            s(&base),
            "--prompts",
            s(&prompts),
            "--lpips",
            "alex",
            "--lpips-weights",
            s(&lpips),
            "--lpips-lin",
            s(&lpips),
            "--out",
            s(&out),
        ];
        a.extend_from_slice(extra);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let run = |extra: &[&str]| {
        let a = args(extra);
        premier(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    run(&[]).unwrap();
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    for row in [
        "| Premier |",
        "| Base |",
        "| Premier: ann |",
        "| Premier: ben |",
    ] {
        assert!(md.contains(row), "{row} missing:\n{md}");
    }
    assert!(md.contains("not** the paper's ViPer score"), "{md}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let premier_row = &json["rows"][0]["scores"];
    assert_eq!(premier_row["clip_t2i"]["n"], 4, "2 users × 2 prompts");
    assert!(premier_row["win_rate"]["mean"].as_f64().unwrap() >= 0.0);
    assert!(premier_row["lpips"]["mean"].as_f64().unwrap() > 0.0);
    // The base row has no win rate or LPIPS of its own.
    assert!(json["rows"][1]["scores"]["win_rate"].is_null());

    let err = run(&[]).unwrap_err();
    assert!(format!("{err:#}").contains("--overwrite"), "{err:#}");
    run(&["--overwrite"]).unwrap();

    // A missing image is named with its folder.
    std::fs::remove_file(dir.path().join("reference/ben/1.png")).unwrap();
    let err = run(&["--overwrite"]).unwrap_err();
    let err = format!("{err:#}");
    assert!(
        err.contains("reference/ben") && err.contains("prompt 1"),
        "{err}"
    );
}
