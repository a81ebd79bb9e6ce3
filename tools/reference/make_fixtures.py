#!/usr/bin/env python3
"""Regenerate tests/fixtures/ from the reference implementations.

Fixtures (see tests/fixtures/README.md for what each holds):
  tiny_flux, tiny_flux_mod, sampling        (fx_flux.py)
  adapter_small, losses, prodigy            (fx_train.py)
  t5_tiny, clip_text_tiny, clip_model_tiny, clip_preprocess, tokenizers, tiny_tokenizers   (fx_text.py)
  vae_tiny                                  (fx_vae.py)
  lpips_tiny                                (fx_lpips.py)
  summary.json                              (this file: every fixture's verification numbers)

Usage:
  PREMIER_REPO=... BFL_FLUX_REPO=... [OPENAI_CLIP_REPO=...] \
      python tools/reference/make_fixtures.py --out DIR [--overwrite] [--only NAME[,NAME]]

PREMIER_REPO / BFL_FLUX_REPO / OPENAI_CLIP_REPO are clones or bare git dirs; the
needed files at the pinned commits are copied into a scratch folder and
imported from there. tests/fixtures/README.md and PROVENANCE.md are
documentation and are not regenerated.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

# fixture -> (module, function); modules are imported only when needed.
MAKERS = {
    "tiny_flux": ("fx_flux", "make_tiny_flux"),
    "tiny_flux_mod": ("fx_flux", "make_tiny_flux_mod"),
    "adapter_small": ("fx_train", "make_adapter_small"),
    "losses": ("fx_train", "make_losses"),
    "prodigy": ("fx_train", "make_prodigy"),
    "t5_tiny": ("fx_text", "make_t5_tiny"),
    "clip_text_tiny": ("fx_text", "make_clip_text_tiny"),
    "clip_model_tiny": ("fx_text", "make_clip_model_tiny"),
    "clip_preprocess": ("fx_text", "make_clip_preprocess"),
    "lpips_tiny": ("fx_lpips", "make_lpips_tiny"),
    "vae_tiny": ("fx_vae", "make_vae_tiny"),
    "sampling": ("fx_flux", "make_sampling"),
    "tokenizers": ("fx_text", "make_tokenizers_golden_ids"),
    "tiny_tokenizers": ("fx_text", "make_tiny_tokenizers"),
}
FIXTURES = list(MAKERS)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="output folder")
    ap.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty folder")
    ap.add_argument("--only", default="", help=f"comma-separated subset of {','.join(FIXTURES)}")
    args = ap.parse_args()

    only = [n for n in args.only.split(",") if n] or FIXTURES
    unknown = sorted(set(only) - set(FIXTURES))
    if unknown:
        ap.error(f"unknown fixture(s) {unknown}; choose from {FIXTURES}")
    args.out.mkdir(parents=True, exist_ok=True)
    if any(args.out.iterdir()) and not args.overwrite:
        ap.error(f"{args.out} is not empty (use --overwrite)")

    # The fixtures were made on CPU with one thread; more threads can change
    # the order of float reductions and so the last bits.
    torch.set_num_threads(1)

    versions = common.versions()
    print("running with:", json.dumps(versions, indent=1))
    for msg in common.check_versions(versions):
        print("WARNING:", msg, "(the output may not match tests/fixtures bit for bit)", file=sys.stderr)

    writer = common.Writer(args.out, versions)
    summary_path = args.out / "summary.json"
    # With --only, keep the verification numbers of the fixtures not rerun.
    old = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    verification = dict(old.get("verification", {}))
    with tempfile.TemporaryDirectory(prefix="premier-ref-") as scratch:
        common.install_references(Path(scratch))
        for name in only:
            t0 = time.perf_counter()
            module, func = MAKERS[name]
            result = getattr(importlib.import_module(module), func)(writer)
            if result is not None:
                verification[name] = result
            print(f"{name}: done in {time.perf_counter() - t0:.1f}s")
    ordered = {k: verification[k] for k in FIXTURES if k in verification}
    writer.json("summary.json", {"provenance": versions, "verification": ordered}, provenance=False)
    print("wrote:", ", ".join(sorted(set(writer.written))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
