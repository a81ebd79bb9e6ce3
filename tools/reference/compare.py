#!/usr/bin/env python3
"""Compare a regenerated fixture folder with tests/fixtures/.

  python tools/reference/compare.py /tmp/fixtures-regen [tests/fixtures]

For every *.safetensors file: the same tensor names, shapes and dtypes, and each
tensor either bit-identical or within the fixture README's recommended
tolerance (the largest abs diff is reported). For every *.json file (also under
tiny_tokenizers/): the same structure and values, except `provenance` (library
versions) which is ignored and `verification` numbers, which are measured
diagnostics and are only reported. README.md and PROVENANCE.md are documentation
and are skipped.

Exit code 1 when any file is missing or any value is beyond tolerance.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch
from safetensors import safe_open

DOCS = {"README.md", "PROVENANCE.md"}
DEFAULT_ATOL = 1e-6  # inputs, weights and anything the README gives no tolerance for


def tolerance(file: str, name: str) -> tuple[float, float]:
    """(atol, rtol) from tests/fixtures/README.md 'Recommended tolerances'."""
    stem = file.removesuffix(".safetensors")
    if stem in ("tiny_flux", "tiny_flux_mod"):
        return 2e-5, 0.0
    if stem == "adapter_small":
        return 1e-5, 0.0
    if stem == "losses":
        if name in ("disp_loss_fp32", "stable_disp_loss", "flow_loss"):
            return 0.0, 1e-5
        if name == "disp_loss":
            return 4e-3, 0.0
        if name.endswith("_grad") or name == "flow_grad_pred":
            return 1e-6, 0.0
        if name == "flow_pred":  # a tiny_flux forward
            return 2e-5, 0.0
        return DEFAULT_ATOL, 0.0
    if stem == "prodigy":
        if any(name.endswith(f"_step{n}") for n in (1, 5, 20)):
            return 0.0, 1e-5
        if name.startswith("premier"):  # steps 40, 60 and the f64 trajectories
            return 0.0, 1e-4
        return DEFAULT_ATOL, 0.0
    if stem in ("t5_tiny", "clip_text_tiny"):
        return 1e-4, 0.0
    if stem == "vae_tiny":
        if name in ("posterior_mean", "latent_scaled", "latent_bfl_encode", "posterior_logvar"):
            return 1e-5, 0.0
        if name == "image":
            return DEFAULT_ATOL, 0.0
        return 1e-4, 0.0
    if stem == "sampling":
        if name.startswith("schedule_") or name == "denoise_timesteps":
            return 1e-6, 0.0
        if name.startswith("denoise_") and name not in ("denoise_noise", "denoise_img_packed"):
            return 2e-5, 0.0
        return DEFAULT_ATOL, 0.0
    return DEFAULT_ATOL, 0.0  # weight files


def load(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def compare_safetensors(file: str, new: Path, ref: Path) -> tuple[bool, str]:
    a, b = load(new), load(ref)
    problems, diffs, not_bitwise = [], [], []
    for k in sorted(set(a) | set(b)):
        if k not in a or k not in b:
            problems.append(f"{k}: only in {'regenerated' if k in a else 'reference'}")
            continue
        x, y = a[k], b[k]
        if x.shape != y.shape or x.dtype != y.dtype:
            problems.append(f"{k}: {tuple(x.shape)} {x.dtype} vs {tuple(y.shape)} {y.dtype}")
            continue
        if torch.equal(x, y) or (x.numel() == 0):
            continue
        not_bitwise.append(k)
        d = (x.double() - y.double()).abs()
        atol, rtol = tolerance(file, k)
        excess = (d - atol - rtol * y.double().abs()).max().item()
        diffs.append((d.max().item(), k))
        if not x.dtype.is_floating_point or excess > 0 or math.isnan(excess):
            problems.append(f"{k}: max abs diff {d.max().item():.3g} beyond atol {atol:g} / rtol {rtol:g}")
    if problems:
        return False, "MISMATCH: " + "; ".join(problems)
    if new.read_bytes() == ref.read_bytes():
        return True, "identical (file bytes)"
    if not not_bitwise:
        return True, "identical tensors (file bytes differ)"
    worst, name = max(diffs)
    return True, f"within tolerance: {len(not_bitwise)}/{len(a)} tensors differ, max abs diff {worst:.3g} ({name})"


def _walk(a, b, path: str, problems: list, notes: list) -> None:
    if path.endswith("provenance"):
        return
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                problems.append(f"{path}/{k}: only in {'regenerated' if k in a else 'reference'}")
            else:
                _walk(a[k], b[k], f"{path}/{k}", problems, notes)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            problems.append(f"{path}: length {len(a)} vs {len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            _walk(x, y, f"{path}[{i}]", problems, notes)
    elif isinstance(a, float) and isinstance(b, (int, float)) and not isinstance(b, bool):
        if a != b:
            if "/verification" in path:
                notes.append(f"{path}: {a!r} vs {b!r}")
            elif abs(a - b) > 1e-6 + 1e-4 * abs(b):
                problems.append(f"{path}: {a!r} vs {b!r}")
            else:
                notes.append(f"{path}: {a!r} vs {b!r} (within 1e-4 rel)")
    elif a != b or type(a) is not type(b):
        if "/verification" in path and isinstance(a, (int, float)) and isinstance(b, (int, float)):
            notes.append(f"{path}: {a!r} vs {b!r}")
        else:
            problems.append(f"{path}: {str(a)[:80]!r} vs {str(b)[:80]!r}")


def compare_json(new: Path, ref: Path) -> tuple[bool, str]:
    if new.read_bytes() == ref.read_bytes():
        return True, "identical (file bytes)"
    a, b = json.loads(new.read_text()), json.loads(ref.read_text())
    problems, notes = [], []
    _walk(a, b, "", problems, notes)
    if problems:
        return False, f"MISMATCH: {len(problems)} field(s): " + "; ".join(problems[:6])
    if notes:
        return True, f"equal except provenance; {len(notes)} verification/number note(s): " + "; ".join(notes[:4])
    return True, "equal except provenance"


def main() -> int:
    if len(sys.argv) not in (2, 3):
        print(__doc__)
        return 2
    new_dir = Path(sys.argv[1])
    ref_dir = Path(sys.argv[2]) if len(sys.argv) == 3 else Path(__file__).resolve().parents[2] / "tests/fixtures"
    ok_all = True
    rows = []
    for ref in sorted(p for p in ref_dir.rglob("*") if p.is_file()):
        rel = ref.relative_to(ref_dir).as_posix()
        if ref.name in DOCS:
            rows.append((rel, "skipped (documentation)"))
            continue
        new = new_dir / rel
        if not new.exists():
            ok, msg = False, "MISSING (not regenerated)"
        elif ref.suffix == ".safetensors":
            ok, msg = compare_safetensors(ref.name, new, ref)
        elif ref.suffix == ".json":
            ok, msg = compare_json(new, ref)
        else:
            ok, msg = new.read_bytes() == ref.read_bytes(), "identical" if new.read_bytes() == ref.read_bytes() else "MISMATCH (bytes)"
        ok_all &= ok
        rows.append((rel, msg))
    extra = sorted(p.relative_to(new_dir).as_posix() for p in new_dir.rglob("*")
                   if p.is_file() and not (ref_dir / p.relative_to(new_dir)).exists())
    width = max(len(r[0]) for r in rows)
    for rel, msg in rows:
        print(f"{rel:<{width}}  {msg}")
    for rel in extra:
        print(f"{rel:<{width}}  extra file (not in the reference folder)")
    print("RESULT:", "all files match within tolerance" if ok_all else "MISMATCH")
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
