"""Text-encoder and tokenizer fixtures.

Makes:
  t5_tiny          -> t5_tiny.{safetensors,json}, t5_tiny_weights.safetensors (transformers T5EncoderModel)
  clip_text_tiny   -> clip_text_tiny.{safetensors,json}, clip_text_tiny_weights.safetensors (CLIPTextModel)
  tokenizers       -> tokenizers_golden_ids.json (real T5 / CLIP-L tokenizer files, plus OpenAI's
                      reference simple_tokenizer.py from OPENAI_CLIP_REPO)
  tiny_tokenizers  -> tiny_tokenizers/{t5,clip}.json (this project's word-level tokenizers; no
                      upstream source, the files are transcribed here and checked with `tokenizers`)
"""

from __future__ import annotations

import importlib.util
import json
import os
import tempfile
from pathlib import Path

import torch

from common import _extract, asset_path, maxdiff, perturb_, tensor_table

T5_CONFIG = dict(
    vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, relative_attention_num_buckets=32,
    relative_attention_max_distance=128, feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-06,
    dropout_rate=0.0, is_encoder_decoder=False, use_cache=False, tie_word_embeddings=False, pad_token_id=0,
    eos_token_id=1,
)
CLIP_CONFIG = dict(
    vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-05, attention_dropout=0.0,
    bos_token_id=0, eos_token_id=2, pad_token_id=1, projection_dim=32,
)


def _loading_problems(info: dict):
    problems = {k: (sorted(v) if isinstance(v, (set, list)) else v) for k, v in info.items() if v}
    return problems or None


def _from_pretrained(cls, config, weights: dict):
    """Load our weight file through the library's own from_pretrained."""
    with tempfile.TemporaryDirectory() as d:
        config.save_pretrained(d)
        from safetensors.torch import save_file

        save_file(weights, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
        model, info = cls.from_pretrained(d, output_loading_info=True)
    return model.eval(), _loading_problems(info)


@torch.no_grad()
def make_t5_tiny(w) -> dict:
    from transformers import T5Config, T5EncoderModel

    g = torch.Generator().manual_seed(16000)
    # 9 ids per row; row 0 ends with </s>, row 1 has 5 ids, </s>, then padding.
    input_ids = torch.randint(3, 128, (2, 9), generator=g)
    input_ids[0, 8] = 1
    input_ids[1, 5] = 1
    input_ids[1, 6:] = 0

    config = T5Config(**T5_CONFIG)
    torch.manual_seed(16001)
    model = T5EncoderModel(config).eval()
    perturb_(model, torch.Generator().manual_seed(16002), named=True)
    out = model(input_ids=input_ids, attention_mask=None, output_hidden_states=True)
    masked = model(input_ids=input_ids, attention_mask=(input_ids != 0).long()).last_hidden_state
    position_bias = model.encoder.block[0].layer[0].SelfAttention.compute_bias(9, 9)

    # encoder.embed_tokens.weight is tied to shared.weight and not stored (as in HF checkpoints)
    weights = {k: v for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}
    reloaded, problems = _from_pretrained(T5EncoderModel, config, weights)
    verification = {
        "from_pretrained(our keys) max diff": maxdiff(reloaded(input_ids=input_ids).last_hidden_state,
                                                      out.last_hidden_state),
        "loading problems": problems,
        "max|no-mask - with-mask| (padding matters)": maxdiff(out.last_hidden_state, masked),
    }
    tensors = dict(input_ids=input_ids, last_hidden_state=out.last_hidden_state,
                   hidden_states=torch.stack(out.hidden_states), position_bias=position_bias,
                   last_hidden_state_with_mask=masked)
    w.safetensors("t5_tiny_weights.safetensors", weights)
    w.safetensors("t5_tiny.safetensors", tensors)
    w.json("t5_tiny.json", dict(T5_TEXT, config=T5_CONFIG, **T5_TEXT2, verification=verification,
                                tensors=tensor_table(tensors)))
    return verification


def clip_tiny_ids(g, lengths) -> torch.Tensor:
    """Rows of 77 ids for the tiny CLIP vocabulary: bos (126), `n` random tokens, then
    pad = eos (127)."""
    input_ids = torch.full((len(lengths), 77), 127, dtype=torch.int64)
    for row, n in enumerate(lengths):
        input_ids[row, 0] = 126  # bos
        input_ids[row, 1:1 + n] = torch.randint(0, 126, (n,), generator=g)
    return input_ids


@torch.no_grad()
def make_clip_text_tiny(w) -> dict:
    from transformers import CLIPTextConfig, CLIPTextModel

    g = torch.Generator().manual_seed(17000)
    input_ids = clip_tiny_ids(g, (5, 20))

    config = CLIPTextConfig(**CLIP_CONFIG)
    torch.manual_seed(17001)
    model = CLIPTextModel(config).eval()
    perturb_(model, torch.Generator().manual_seed(17002), named=True)
    out = model(input_ids=input_ids, output_hidden_states=True)
    eos_position = input_ids.argmax(-1)

    # checkpoint key names of openai/clip-vit-large-patch14 (text_model.*)
    weights = {(k if k.startswith("text_model.") else f"text_model.{k}"): v for k, v in model.state_dict().items()}
    reloaded, problems = _from_pretrained(CLIPTextModel, config, weights)
    verification = {
        "from_pretrained(our text_model.* keys) max diff (pooler_output)": maxdiff(
            reloaded(input_ids=input_ids).pooler_output, out.pooler_output),
        "loading problems": problems,
        "max|pooler_output - last_hidden_state[argmax(ids)]|": maxdiff(
            out.pooler_output, out.last_hidden_state[torch.arange(2), eos_position]),
    }
    tensors = dict(input_ids=input_ids, eos_position=eos_position, last_hidden_state=out.last_hidden_state,
                   pooler_output=out.pooler_output, hidden_states=torch.stack(out.hidden_states))
    w.safetensors("clip_text_tiny_weights.safetensors", weights)
    w.safetensors("clip_text_tiny.safetensors", tensors)
    w.json("clip_text_tiny.json", dict(CLIP_TEXT, config=CLIP_CONFIG, **CLIP_TEXT2, verification=verification,
                                       tensors=tensor_table(tensors)))
    return verification


PROMPTS = [
    "A photo of a cat wearing sunglasses.",
    "a rusty robot walking on a beach, 4k, HDR",
    "Café crème brûlée — naïve façade!",
    "  multiple   spaces\tand\nnewlines  ",
    "",
    "UPPER lower MiXeD 12345 3.14 #hashtag @user",
    "日本語のテキスト and emoji 🙂👍",
]


def _openai_simple_tokenizer():
    """OpenAI CLIP's reference clip/simple_tokenizer.py (and its BPE file) from OPENAI_CLIP_REPO."""
    repo = os.environ.get("OPENAI_CLIP_REPO")
    if not repo:
        raise SystemExit("tokenizers: set OPENAI_CLIP_REPO (clone or bare git dir of github.com/openai/CLIP)")
    commit = os.environ.get("OPENAI_CLIP_COMMIT", "HEAD")
    d = Path(tempfile.mkdtemp(prefix="openai-clip-"))
    _extract(repo, commit, ["clip/simple_tokenizer.py", "clip/bpe_simple_vocab_16e6.txt.gz"], d)
    spec = importlib.util.spec_from_file_location("openai_simple_tokenizer", d / "clip/simple_tokenizer.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.SimpleTokenizer()


def make_tokenizers_golden_ids(w) -> dict:
    import tokenizers
    from transformers import CLIPTokenizer, T5TokenizerFast

    t5_dir = asset_path("tokenizers", "t5-v1_1-xxl")
    clip_dir = asset_path("tokenizers", "clip-vit-large-patch14")
    # Built from the tokenizer.json files. In transformers 5.24, CLIPTokenizer(vocab_file=...,
    # merges_file=...) gives wrong ids, and T5TokenizerFast.from_pretrained(dir) drops the
    # trailing "▁" of a prompt that ends in spaces.
    t5 = T5TokenizerFast(tokenizer_file=str(t5_dir / "tokenizer.json"))
    clip = CLIPTokenizer(tokenizer_file=str(clip_dir / "tokenizer.json"))
    openai = _openai_simple_tokenizer()
    raw_t5 = tokenizers.Tokenizer.from_file(str(t5_dir / "tokenizer.json"))
    raw_clip = tokenizers.Tokenizer.from_file(str(clip_dir / "tokenizer.json"))

    entries, checked = [], 0
    for p in PROMPTS:
        t5_enc, clip_enc = t5(p), clip(p)
        t5_ids, clip_ids = t5_enc.input_ids, clip_enc.input_ids
        e = {
            "prompt": p,
            "t5_ids": t5_ids,
            "t5_tokens": t5_enc.tokens(),  # the text pieces (an <unk> shows its source text)
            "t5_ids_pad32": t5(p, padding="max_length", max_length=32, truncation=True).input_ids,
            "clip_ids_pad77": clip(p, padding="max_length", max_length=77, truncation=True).input_ids,
            "clip_tokens": clip_enc.tokens(),
            "openai_simple_tokenizer_ids": openai.encode(p),
        }
        # Cross-checks: the plain `tokenizers` files and OpenAI's tokenizer agree.
        assert raw_t5.encode(p).ids == t5_ids, p
        assert raw_clip.encode(p).ids == clip_ids, p
        n = len(e["openai_simple_tokenizer_ids"])
        assert e["clip_ids_pad77"][1:1 + n] == e["openai_simple_tokenizer_ids"], p
        checked += 1
        entries.append(e)
    w.json("tokenizers_golden_ids.json", entries, provenance=False)
    return {"prompts re-checked against assets tokenizers": checked}


def _tiny_tokenizer(words: list[str], specials: dict[str, int], bos: str | None, eos: str) -> dict:
    """A word-level tokenizer.json: lowercase, whitespace split, [bos] A eos."""
    tokens = ([bos] if bos else []) + [eos]
    added = [{"id": specials[t], "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for t in sorted(tokens, key=lambda t: -specials[t])]
    seq = [{"SpecialToken": {"id": bos, "type_id": 0}}] if bos else []
    seq += [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": eos, "type_id": 0}}]
    vocab = {"<unk>": 2, **{wd: 3 + i for i, wd in enumerate(words)}}
    vocab.update({t: specials[t] for t in sorted(tokens, key=lambda t: specials[t])})
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "Lowercase"}, "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": {
            "type": "TemplateProcessing", "single": seq, "pair": seq,
            "special_tokens": {t: {"id": t, "ids": [specials[t]], "tokens": [t]} for t in sorted(tokens)},
        },
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    }


def make_tiny_tokenizers(w) -> None:
    import tokenizers

    words = "a red circle blue square on grass".split()
    files = {
        "t5.json": (_tiny_tokenizer(words, {"</s>": 1}, None, "</s>"), [3, 4, 5, 1]),
        "clip.json": (_tiny_tokenizer(words, {"<s>": 126, "</s>": 127}, "<s>", "</s>"), [126, 3, 4, 5, 127]),
    }
    (w.out / "tiny_tokenizers").mkdir(exist_ok=True)
    for name, (obj, expect) in files.items():
        text = json.dumps(obj, indent=1)
        ids = tokenizers.Tokenizer.from_str(text).encode("A red CIRCLE").ids
        assert ids == expect, (name, ids)
        w.text(f"tiny_tokenizers/{name}", text)


# ---- prose of the json files (project text, as in tests/fixtures) ----

T5_TEXT = {"description": (
    "transformers T5EncoderModel (T5 v1.1 / FLUX tokenizer_2 encoder style), weights t5_tiny_weights.safetensors in "
    "HF key format. Expected output = last_hidden_state of model(input_ids=input_ids, attention_mask=None): FLUX "
    "calls T5 WITHOUT an attention mask, so padding tokens (id 0) are attended to.")}
T5_TEXT2 = {
    "config_notes": (
        "feed_forward_proj 'gated-gelu' = wo(gelu_tanh(wi_0 x) * wi_1 x) ('gelu_new'); no biases anywhere; RMS "
        "LayerNorm x*rsqrt(mean(x^2)+eps)*w (no mean subtraction, no bias), in f32; attention scores are NOT "
        "scaled by 1/sqrt(d_kv); relative position bias (bidirectional buckets) only in block 0, shared by all "
        "blocks; final_layer_norm after the last block; dropout 0."),
    "weights": (
        "HF keys (e.g. shared.weight, encoder.block.0.layer.0.SelfAttention.{q,k,v,o}.weight, "
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight [32, heads], "
        "encoder.block.N.layer.0.layer_norm.weight, encoder.block.N.layer.1.DenseReluDense.{wi_0,wi_1,wo}.weight, "
        "encoder.block.N.layer.1.layer_norm.weight, encoder.final_layer_norm.weight). encoder.embed_tokens.weight "
        "is tied to shared.weight and not stored (as in HF checkpoints)."),
    "weight_init": (
        "torch.manual_seed(16001); transformers default init; every parameter p += 0.05*N(0,1) from "
        "torch.Generator().manual_seed(16002) in named_parameters() order"),
    "inputs": (
        "input_ids (2,9) int64: ids in [3,128) from torch.Generator().manual_seed(16000); row 0 ends with </s>=1, "
        "row 1 = 5 tokens, </s>=1, then pad id 0 x3 (padding at the end)"),
    "tensors_notes": (
        "hidden_states = stack of output_hidden_states (embeddings, after block 0, ..., and the last entry = "
        "last_hidden_state after final_layer_norm); position_bias = block 0 compute_bias(L, L) (1, heads, L, L), "
        "the additive score bias before softmax; last_hidden_state_with_mask = the same model with attention_mask "
        "= (ids != 0): NOT what FLUX uses, for reference only."),
}
CLIP_TEXT = {"description": (
    "transformers CLIPTextModel (CLIP ViT-L/14 text tower style, FLUX `text_encoder`), weights "
    "clip_text_tiny_weights.safetensors with the checkpoint key names of openai/clip-vit-large-patch14 "
    "(text_model.embeddings..., text_model.encoder.layers.N..., text_model.final_layer_norm). Expected: "
    "last_hidden_state and pooler_output of model(input_ids) (no attention_mask, as FLUX calls it; FLUX uses "
    "pooler_output).")}
CLIP_TEXT2 = {
    "config_notes": (
        "pre-LN transformer: x += attn(LN1(x)) with a CAUSAL mask, x += fc2(quick_gelu(fc1(LN2(x)))) with "
        "quick_gelu(x) = x*sigmoid(1.702x); attention scale 1/sqrt(head_dim); learned position embeddings (77); "
        "final_layer_norm; LayerNorm eps 1e-5. eos_token_id = 2 (as in the CLIP-L config) selects the LEGACY "
        "pooling pooler_output = last_hidden_state[b, argmax(input_ids[b])]: the eos id must be the largest id, so "
        "the tiny vocabulary uses bos = vocab-2, eos = pad = vocab-1 (CLIP-L: 49406 / 49407) and argmax returns "
        "the FIRST eos."),
    "weight_init": (
        "torch.manual_seed(17001); transformers default init; every parameter p += 0.05*N(0,1) from "
        "torch.Generator().manual_seed(17002) in named_parameters() order"),
    "inputs": (
        "input_ids (2,77) int64 padded like FLUX pads CLIP (padding='max_length', max_length 77, pad = eos): "
        "[bos=126, n random ids in [0,126), eos=127, 127, ...] with n = 5 and 20 (ids from "
        "torch.Generator().manual_seed(17000)); eos positions 6 and 21"),
    "tensors_notes": (
        "hidden_states = stack of output_hidden_states (embeddings, after each layer; BEFORE final_layer_norm); "
        "eos_position = argmax(input_ids, -1) (int64)"),
}


CLIP_VISION_CONFIG = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_channels=3,
    image_size=32, patch_size=8, hidden_act="quick_gelu", layer_norm_eps=1e-05, attention_dropout=0.0,
)
CLIP_MODEL_PROJECTION_DIM = 24


@torch.no_grad()
def make_clip_model_tiny(w) -> dict:
    """A whole CLIPModel (both towers, projections, logit scale) in the Hugging Face layout."""
    from transformers import CLIPConfig, CLIPModel

    g = torch.Generator().manual_seed(18000)
    input_ids = clip_tiny_ids(g, (7, 12))
    # Already normalized pixels (CLIP's preprocessing is checked on its own).
    pixel_values = torch.randn((3, 3, 32, 32), generator=g)

    config = CLIPConfig(text_config=CLIP_CONFIG, vision_config=CLIP_VISION_CONFIG,
                        projection_dim=CLIP_MODEL_PROJECTION_DIM)
    torch.manual_seed(18001)
    model = CLIPModel(config).eval()
    perturb_(model, torch.Generator().manual_seed(18002), named=True)
    vision = model.vision_model(pixel_values=pixel_values)
    text = model.text_model(input_ids=input_ids)
    image_embeds = model.visual_projection(vision.pooler_output)
    text_embeds = model.text_projection(text.pooler_output)
    out = model(input_ids=input_ids, pixel_values=pixel_values)

    weights = dict(model.state_dict())
    reloaded, problems = _from_pretrained(CLIPModel, config, weights)
    again = reloaded(input_ids=input_ids, pixel_values=pixel_values)
    verification = {
        "from_pretrained(our keys) max diff (logits_per_image)": maxdiff(again.logits_per_image,
                                                                        out.logits_per_image),
        "loading problems": problems,
        "max|image_embeds - visual_projection(pooler_output)|": maxdiff(out.image_embeds,
                                                                       torch.nn.functional.normalize(image_embeds, dim=-1)),
        "max|text_embeds - text_projection(pooler_output)|": maxdiff(out.text_embeds,
                                                                    torch.nn.functional.normalize(text_embeds, dim=-1)),
    }
    tensors = dict(input_ids=input_ids, pixel_values=pixel_values,
                   vision_last_hidden_state=vision.last_hidden_state, vision_pooler_output=vision.pooler_output,
                   image_features=image_embeds, text_features=text_embeds,
                   logits_per_image=out.logits_per_image)
    w.safetensors("clip_model_tiny_weights.safetensors", weights)
    w.safetensors("clip_model_tiny.safetensors", tensors)
    w.json("clip_model_tiny.json", dict(
        description="transformers CLIPModel with tiny random weights (init convention: p += 0.05 N(0,1)); "
                    "image_features = visual_projection(vision_model(pixel_values).pooler_output), "
                    "text_features = text_projection(text_model(input_ids).pooler_output), as "
                    "CLIPModel.get_image_features / get_text_features; logits_per_image = "
                    "exp(logit_scale) * cos(image, text)",
        config=dict(text_config=CLIP_CONFIG, vision_config=CLIP_VISION_CONFIG,
                    projection_dim=CLIP_MODEL_PROJECTION_DIM),
        seeds=dict(inputs=18000, init=18001, perturb=18002),
        verification=verification, tensors=tensor_table(tensors)))
    return verification


@torch.no_grad()
def make_clip_preprocess(w) -> dict:
    """transformers' CLIP image preprocessing (the PIL backend, `CLIPImageProcessorPil`: what
    `CLIPImageProcessor` runs without torchvision) on a real non-square photo, landscape and
    rotated to portrait."""
    import numpy as np
    from PIL import Image
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    photo = Image.open(asset_path("images", "chelsea.png")).convert("RGB")  # 451 x 300
    photos = {"landscape": photo, "portrait": photo.transpose(Image.Transpose.ROTATE_270)}
    default = CLIPImageProcessorPil()
    small = CLIPImageProcessorPil(size={"shortest_edge": 64}, crop_size={"height": 56, "width": 56})
    mean = np.array(default.image_mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.array(default.image_std, dtype=np.float32).reshape(3, 1, 1)
    tensors, verification = {}, {}
    for name, image in photos.items():
        pixels = default(images=image, return_tensors="pt").pixel_values[0]
        # The 224 x 224 output as the bytes it was normalized from (lossless: checked below).
        u8 = torch.from_numpy(np.rint((pixels.numpy() * std + mean) * 255.0)).clamp(0, 255).to(torch.uint8)
        again = (u8.numpy().astype(np.float32) / 255.0 - mean) / std
        verification[f"{name}: max|pixel_values - normalize(bytes)|"] = float(np.abs(again - pixels.numpy()).max())
        tensors[f"{name}_224_bytes"] = u8
        tensors[f"{name}_64_56_pixel_values"] = small(images=image, return_tensors="pt").pixel_values[0]
    w.safetensors("clip_preprocess.safetensors", tensors)
    w.json("clip_preprocess.json", dict(
        description="CLIPImageProcessorPil (transformers' CLIP preprocessing, PIL backend): convert to RGB, "
                    "resize the shorter side (bicubic, PIL's resampling of 8-bit images), centre crop, "
                    "x / 255, (x - mean) / std; on images/chelsea.png (451 x 300) and the same photo "
                    "rotated 90 degrees clockwise (PIL ROTATE_270)",
        default=dict(shortest_edge=224, crop=224, mean=list(default.image_mean), std=list(default.image_std),
                     resample=int(default.resample)),
        small=dict(shortest_edge=64, crop=56),
        verification=verification, tensors=tensor_table(tensors)))
    return verification
