//! The shipped tokenizers reproduce the Python ids exactly (fixture `tokenizers_golden_ids.json`).

use std::path::PathBuf;

use premier_text::{PromptTokenizer, TextError};

fn golden() -> Vec<serde_json::Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tokenizers_golden_ids.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

#[test]
fn t5_and_clip_ids_match_python() {
    let t5 = PromptTokenizer::shipped_t5(32).unwrap();
    let clip = PromptTokenizer::shipped_clip().unwrap();
    for entry in golden() {
        let prompt = entry["prompt"].as_str().unwrap();
        let got = t5.encode(&[prompt]).unwrap();
        assert_eq!(got.ids[0], ids(&entry["t5_ids_pad32"]), "T5 {prompt:?}");
        let got = clip.encode(&[prompt]).unwrap();
        assert_eq!(got.ids[0], ids(&entry["clip_ids_pad77"]), "CLIP {prompt:?}");
    }
}

#[test]
fn long_prompts_are_truncated_and_reported() {
    let t5 = PromptTokenizer::shipped_t5(16).unwrap();
    let long = "a very long prompt about a cat ".repeat(20);
    let got = t5.encode(&["short", long.as_str()]).unwrap();
    assert_eq!(got.truncated, vec![1]);
    assert_eq!(got.ids[1].len(), 16);
    assert_eq!(
        *got.ids[1].last().unwrap(),
        1,
        "T5 keeps </s> at the end after truncation"
    );
    let clip = PromptTokenizer::shipped_clip().unwrap();
    let got = clip.encode(&[long.as_str()]).unwrap();
    assert_eq!((got.ids[0][0], got.ids[0][76]), (49406, 49407));
}

#[test]
fn missing_tokenizer_file_is_named() {
    let err = PromptTokenizer::t5("/nonexistent/tokenizer.json", 512)
        .err()
        .unwrap();
    assert!(
        matches!(err, TextError::Tokenizer { ref path, .. } if path.ends_with("tokenizer.json")),
        "{err}"
    );
}
