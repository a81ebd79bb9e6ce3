//! Every dataset format parses to the same users, bad data names file and line (or is skipped and
//! counted), and the held-out split is seeded.

use std::path::{Path, PathBuf};

use premier_train::data::{Dataset, ReadOptions};

fn png(path: &Path) {
    image::RgbImage::from_pixel(4, 4, image::Rgb([200, 10, 10]))
        .save(path)
        .unwrap();
}

/// Two users with 3 and 2 images under `dir/img`.
fn images(dir: &Path) -> Vec<(String, PathBuf, String)> {
    std::fs::create_dir_all(dir.join("img")).unwrap();
    let mut out = Vec::new();
    for (user, n) in [("alice", 3), ("bob", 2)] {
        for i in 0..n {
            let p = dir.join("img").join(format!("{user}_{i}.png"));
            png(&p);
            out.push((
                user.to_string(),
                p,
                format!("a picture number {i} of {user}"),
            ));
        }
    }
    out
}

fn summary(d: &Dataset) -> Vec<(String, Vec<String>)> {
    d.users
        .iter()
        .map(|u| {
            (
                u.id.clone(),
                u.samples.iter().map(|s| s.caption.clone()).collect(),
            )
        })
        .collect()
}

#[test]
fn all_formats_agree() {
    let dir = tempfile::tempdir().unwrap();
    let items = images(dir.path());
    let options = ReadOptions::default();

    let jsonl = dir.path().join("manifest.jsonl");
    let lines: Vec<String> = items
        .iter()
        .map(|(u, p, c)| serde_json::json!({"user": u, "image": p.strip_prefix(dir.path()).unwrap(), "caption": c}).to_string())
        .collect();
    std::fs::write(&jsonl, lines.join("\n")).unwrap();
    let from_jsonl = Dataset::from_jsonl(&jsonl, &options).unwrap();

    let mut csvs = Vec::new();
    for user in ["alice", "bob"] {
        let path = dir.path().join(format!("{user}.csv"));
        let mut w = csv::Writer::from_path(&path).unwrap();
        w.write_record(["positive_image", "caption"]).unwrap();
        for (_, p, c) in items.iter().filter(|(u, _, _)| u == user) {
            w.write_record([p.to_str().unwrap(), c]).unwrap();
        }
        w.flush().unwrap();
        csvs.push(path);
    }
    let from_csv = Dataset::from_csvs(&csvs, &options).unwrap();

    let root = dir.path().join("folder");
    for (u, p, c) in &items {
        let d = root.join(u);
        std::fs::create_dir_all(&d).unwrap();
        let target = d.join(p.file_name().unwrap());
        std::fs::copy(p, &target).unwrap();
        std::fs::write(target.with_extension("txt"), c).unwrap();
    }
    let from_folder = Dataset::from_folder(&root, &options).unwrap();

    use serde_pickle::{HashableValue, Value};
    let users: Vec<Value> = ["alice", "bob"]
        .iter()
        .map(|user| {
            let mut entries: Vec<Value> = items
                .iter()
                .filter(|(u, _, _)| u == user)
                .map(|(_, p, c)| {
                    Value::List(vec![
                        Value::String(p.to_str().unwrap().into()),
                        Value::String(c.clone()),
                    ])
                })
                .collect();
            entries.push(Value::Dict(
                [(HashableValue::String("age".into()), Value::I64(30))]
                    .into_iter()
                    .collect(),
            ));
            Value::List(entries)
        })
        .collect();
    let pickle = dir.path().join("users.pkl");
    std::fs::write(
        &pickle,
        serde_pickle::value_to_vec(&Value::List(users), Default::default()).unwrap(),
    )
    .unwrap();
    let from_pickle = Dataset::from_pickle(&pickle, &options).unwrap();

    // `Dataset::read` picks the reader from what it is given.
    assert_eq!(
        Dataset::read(std::slice::from_ref(&jsonl), &options).unwrap(),
        from_jsonl
    );
    assert_eq!(Dataset::read(&csvs, &options).unwrap(), from_csv);
    assert_eq!(
        Dataset::read(std::slice::from_ref(&root), &options).unwrap(),
        from_folder
    );
    assert_eq!(
        Dataset::read(std::slice::from_ref(&pickle), &options).unwrap(),
        from_pickle
    );
    let odd = Dataset::read(&[jsonl.clone(), pickle.clone()], &options).unwrap_err();
    assert!(odd.to_string().contains("manifest.jsonl"), "{odd}");

    let want = summary(&from_csv);
    assert_eq!(want.len(), 2);
    assert_eq!(want[0].1.len(), 3);
    assert_eq!(summary(&from_jsonl), want);
    assert_eq!(summary(&from_folder), want);
    // The pickle's users are numbered by position.
    let pickled: Vec<_> = summary(&from_pickle).into_iter().map(|(_, c)| c).collect();
    assert_eq!(
        pickled,
        want.iter().map(|(_, c)| c.clone()).collect::<Vec<_>>()
    );
    assert_eq!(from_pickle.users[1].id, "1");

    // Seeded split: one held-out image per user, reproducible, never all of a user's images.
    let (train, test) = from_csv.split(1, 7);
    assert_eq!(from_csv.split(1, 7), (train.clone(), test.clone()));
    assert_eq!(
        test.users
            .iter()
            .map(|u| u.samples.len())
            .collect::<Vec<_>>(),
        vec![1, 1]
    );
    assert_eq!(
        train
            .users
            .iter()
            .map(|u| u.samples.len())
            .collect::<Vec<_>>(),
        vec![2, 1]
    );
    let (_, all_held) = from_csv.split(10, 7);
    assert_eq!(
        all_held.users[1].samples.len(),
        1,
        "bob keeps one image to train on"
    );
}

#[test]
fn bad_data_names_file_and_line_or_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let items = images(dir.path());
    let jsonl = dir.path().join("bad.jsonl");
    let good = |i: usize| {
        serde_json::json!({"user": items[i].0, "image": items[i].1, "caption": items[i].2})
            .to_string()
    };
    let lines = [
        good(0),
        serde_json::json!({"user": "alice", "image": "img/missing.png", "caption": "gone"})
            .to_string(),
        serde_json::json!({"user": "bob", "image": items[3].1, "caption": "   "}).to_string(),
        good(4),
    ];
    std::fs::write(&jsonl, lines.join("\n")).unwrap();
    let err = Dataset::from_jsonl(&jsonl, &ReadOptions::default()).unwrap_err();
    assert_eq!(
        (err.file.clone(), err.line),
        (jsonl.clone(), Some(2)),
        "{err}"
    );
    assert!(err.to_string().contains("missing.png"), "{err}");

    // A manifest with no entries is an error naming it.
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "\n").unwrap();
    let err = Dataset::from_jsonl(&empty, &ReadOptions::default()).unwrap_err();
    assert_eq!(err.file, empty);
    assert!(err.to_string().contains("no users with images"), "{err}");

    // A byte-order mark is dropped; a byte that is not UTF-8 is named by line and column.
    let bom = dir.path().join("bom.jsonl");
    std::fs::write(&bom, format!("\u{feff}{}\n{}", good(0), good(4))).unwrap();
    assert_eq!(
        Dataset::from_jsonl(&bom, &ReadOptions::default())
            .unwrap()
            .users
            .len(),
        2
    );
    let latin1 = dir.path().join("latin1.jsonl");
    let mut bytes = format!("{}\n{{\"user\": \"b", good(0)).into_bytes();
    bytes.push(0xe9);
    bytes.extend_from_slice(b"b\", \"image\": \"x.png\"}");
    std::fs::write(&latin1, bytes).unwrap();
    let err = Dataset::from_jsonl(&latin1, &ReadOptions::default()).unwrap_err();
    assert_eq!(err.line, Some(2), "{err}");
    assert!(
        err.to_string()
            .contains("byte 0xe9 at column 12 is not UTF-8"),
        "{err}"
    );

    let lenient = ReadOptions {
        skip_bad: true,
        min_images: 1,
        ..ReadOptions::default()
    };
    let d = Dataset::from_jsonl(&jsonl, &lenient).unwrap();
    assert_eq!(d.skipped.len(), 2, "{:?}", d.skipped);
    assert!(
        d.skipped[1].contains(":3: empty caption"),
        "{:?}",
        d.skipped
    );
    assert_eq!(d.users.iter().map(|u| u.samples.len()).sum::<usize>(), 2);

    // Too few images for a user.
    let strict_min = ReadOptions {
        min_images: 2,
        ..ReadOptions::default()
    };
    let err = Dataset::from_jsonl(
        &jsonl,
        &ReadOptions {
            skip_bad: false,
            ..strict_min
        },
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("missing.png"),
        "line errors come first: {err}"
    );
    // Skipping every user leaves nothing to train on: an error that says why.
    let err = Dataset::from_jsonl(
        &jsonl,
        &ReadOptions {
            skip_bad: true,
            ..strict_min
        },
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("no users with images left")
            && err.to_string().contains("fewer than 2"),
        "{err}"
    );

    // The same user id twice (two CSVs with one stem).
    for sub in ["a", "b"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        let mut w = csv::Writer::from_path(dir.path().join(sub).join("u7.csv")).unwrap();
        w.write_record(["positive_image", "caption"]).unwrap();
        w.write_record([items[0].1.to_str().unwrap(), "x"]).unwrap();
        w.flush().unwrap();
    }
    let csvs = vec![dir.path().join("a/u7.csv"), dir.path().join("b/u7.csv")];
    let err = Dataset::from_csvs(&csvs, &ReadOptions::default()).unwrap_err();
    assert!(
        err.to_string().contains("duplicate user id \"u7\"") && err.file.ends_with("b/u7.csv"),
        "{err}"
    );

    // A CSV without the official columns.
    let odd = dir.path().join("odd.csv");
    std::fs::write(&odd, "image,text\nx.png,y\n").unwrap();
    let err = Dataset::from_csvs(&[odd.clone()], &ReadOptions::default()).unwrap_err();
    assert_eq!(err.line, Some(1), "{err}");
    // Not a pickle.
    assert!(Dataset::from_pickle(&odd, &ReadOptions::default())
        .unwrap_err()
        .to_string()
        .contains("not a pickle"));
}

/// An entry element of a test pickle: text or a number.
#[derive(serde::Serialize)]
#[serde(untagged)]
enum Field {
    Text(&'static str),
    Number(i64),
}

/// A user's entry, or the metadata dict that ends the list.
#[derive(serde::Serialize)]
#[serde(untagged)]
enum Entry {
    Item(Vec<Field>),
    Meta(std::collections::BTreeMap<String, i64>),
}

/// A dict pickle written in the given key order (serde_pickle's `Value::Dict` would sort it).
struct OrderedUsers(Vec<(&'static str, Vec<Entry>)>);

impl serde::Serialize for OrderedUsers {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

#[test]
fn pickle_captions_follow_the_released_code_and_dict_users_keep_the_file_order() {
    use Field::{Number, Text};
    // zoe: the released code's layout, [path, a number, caption]; adam: [path, text, caption];
    // mia: the README's [path, caption]. Each list ends with its metadata dict.
    let meta = || Entry::Meta([("age".to_string(), 30)].into_iter().collect());
    let users = OrderedUsers(vec![
        (
            "zoe",
            vec![
                Entry::Item(vec![Text("z0.png"), Number(4), Text("zoe's caption")]),
                meta(),
            ],
        ),
        (
            "adam",
            vec![
                Entry::Item(vec![Text("a0.png"), Text("a tag"), Text("adam's caption")]),
                meta(),
            ],
        ),
        (
            "mia",
            vec![
                Entry::Item(vec![Text("m0.png"), Text("mia's caption")]),
                meta(),
            ],
        ),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let pickle = dir.path().join("users.pkl");
    std::fs::write(
        &pickle,
        serde_pickle::to_vec(&users, Default::default()).unwrap(),
    )
    .unwrap();
    let options = ReadOptions {
        check_images: false,
        ..ReadOptions::default()
    };
    let data = Dataset::from_pickle(&pickle, &options).unwrap();
    let ids: Vec<&str> = data.users.iter().map(|u| u.id.as_str()).collect();
    assert_eq!(
        ids,
        ["zoe", "adam", "mia"],
        "Python's insertion order, not sorted"
    );
    let captions: Vec<&str> = data
        .users
        .iter()
        .map(|u| u.samples[0].caption.as_str())
        .collect();
    assert_eq!(
        captions,
        ["zoe's caption", "adam's caption", "mia's caption"]
    );
    // Asked for element 1: adam's tag; zoe's number is no caption, named with the element.
    let err = Dataset::from_pickle(
        &pickle,
        &ReadOptions {
            pickle_caption: Some(1),
            ..options.clone()
        },
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("user zoe") && err.to_string().contains("[1]"),
        "{err}"
    );
    let lenient = ReadOptions {
        pickle_caption: Some(1),
        skip_bad: true,
        ..options
    };
    let data = Dataset::from_pickle(&pickle, &lenient).unwrap();
    let captions: Vec<&str> = data
        .users
        .iter()
        .map(|u| u.samples[0].caption.as_str())
        .collect();
    assert_eq!(captions, ["a tag", "mia's caption"]);
}
