"""Shared helpers for the fixture generators in tools/reference/.

Nothing here makes a fixture by itself: it holds the pinned versions, the
perturbed-init convention, the atomic writers and the code that copies the
reference repositories (Premier, BFL flux) at their pinned commits into a
scratch folder and puts that folder on sys.path.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import torch

PREMIER_COMMIT = "42473476a189b6b0127890a98e92b7edf49c0d59"
BFL_COMMIT = "802fb4713906133fcbd0d8dc5351620ca4773036"

# Versions the fixtures in tests/fixtures were made with (see its README).
PINNED = {
    "torch": "2.15",
    "diffusers": "0.42.1",
    "transformers": "5.24.0",
    "prodigyopt": "1.1.2",
    "tokenizers": "0.23",
    "python": "3.11",
}

REPO_ROOT = Path(__file__).resolve().parents[2]

# Files of the reference repositories that the generators import.
PREMIER_FILES = [
    "scripts/__init__.py",
    "scripts/pipeline/flux_adapter.py",
    "scripts/pipeline/mod_adapters.py",
    "scripts/utils/utils.py",
    "scripts/train_flux/train_premier.py",
    "train/config/XVerse_config_demo.yaml",
]
BFL_FILES = [
    "src/flux/__init__.py",
    "src/flux/math.py",
    "src/flux/model.py",
    "src/flux/sampling.py",
    "src/flux/modules/autoencoder.py",
    "src/flux/modules/conditioner.py",
    "src/flux/modules/layers.py",
    "src/flux/modules/lora.py",
]

# flux.sampling imports these two only for the Kontext / Canny / Depth / Redux
# tools; the stand-ins give it the names it imports and nothing else.
BFL_STUBS = {
    "src/flux/util.py": '"""Stand-in for flux.util (only Kontext needs it)."""\n'
    "PREFERED_KONTEXT_RESOLUTIONS = []\n",
    "src/flux/modules/image_embedders.py": '"""Stand-in for flux.modules.image_embedders'
    ' (Canny/Depth/Redux only)."""\n'
    "class CannyImageEncoder: ...\n\n\nclass DepthImageEncoder: ...\n\n\nclass ReduxImageEncoder: ...\n",
}


def versions() -> dict:
    """Versions of the libraries this run uses, in the fixtures' provenance format."""
    import diffusers
    import transformers

    out = {
        "premier": f"github.com/120L020904/Premier @ {PREMIER_COMMIT}",
        "bfl_flux": f"github.com/black-forest-labs/flux @ {BFL_COMMIT}",
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
    }
    try:
        from importlib.metadata import version

        out["prodigyopt"] = version("prodigyopt")
    except Exception:  # noqa: BLE001 - only used for the report
        out["prodigyopt"] = "missing"
    out["python"] = sys.version.split()[0]
    return out


def check_versions(v: dict) -> list[str]:
    """Warnings for every library whose version differs from the pinned one."""
    import tokenizers

    found = dict(v, tokenizers=tokenizers.__version__)
    warnings = []
    for name, want in PINNED.items():
        have = found.get(name, "missing")
        # "2.15" pins 2.15.x; the local build tag (+cpu, +cu132) does not matter.
        if not (have == want or have.split("+")[0].startswith(want + ".")):
            warnings.append(f"{name} {have} differs from the pinned {want}")
    return warnings


def _extract(repo: str, commit: str, paths: list[str], dest: Path) -> None:
    """Copy `paths` at `commit` of a clone or bare git dir into dest (git archive)."""
    try:
        blob = subprocess.run(
            ["git", f"--git-dir={_git_dir(repo)}", "archive", "--format=tar", commit, *paths],
            check=True,
            capture_output=True,
        ).stdout
    except subprocess.CalledProcessError as e:
        raise SystemExit(f"git archive {commit} failed in {repo}: {e.stderr.decode().strip()}")
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(dest, filter="data")


def _git_dir(repo: str) -> str:
    p = Path(repo)
    return str(p / ".git") if (p / ".git").exists() else str(p)


def install_references(scratch: Path) -> None:
    """Put Premier and BFL flux (pinned commits) under scratch and on sys.path."""
    premier = os.environ.get("PREMIER_REPO")
    bfl = os.environ.get("BFL_FLUX_REPO")
    if not premier or not bfl:
        raise SystemExit("set PREMIER_REPO and BFL_FLUX_REPO (clone or bare git dir of each reference)")
    p_dir, b_dir = scratch / "premier", scratch / "bfl"
    p_dir.mkdir(parents=True, exist_ok=True)
    b_dir.mkdir(parents=True, exist_ok=True)
    _extract(premier, PREMIER_COMMIT, PREMIER_FILES, p_dir)
    _extract(bfl, BFL_COMMIT, BFL_FILES, b_dir)
    for rel, text in BFL_STUBS.items():
        (b_dir / rel).write_text(text)
    sys.path.insert(0, str(b_dir / "src"))
    sys.path.insert(0, str(p_dir))
    global _PREMIER_DIR
    _PREMIER_DIR = p_dir


_PREMIER_DIR: Path | None = None


def premier_path(rel: str) -> Path:
    """Path of a Premier file inside the scratch copy (after install_references)."""
    if _PREMIER_DIR is None:
        raise RuntimeError("install_references() has not run")
    return _PREMIER_DIR / rel


def perturb_(module: torch.nn.Module, generator: torch.Generator | None = None, named: bool = False) -> None:
    """The fixtures' init convention: every parameter p += 0.05 * N(0, 1).

    generator=None draws from the global RNG (tiny_flux); otherwise from the
    given torch.Generator (all other models).
    """
    params = [p for _, p in module.named_parameters()] if named else list(module.parameters())
    with torch.no_grad():
        for p in params:
            if generator is None:
                p += 0.05 * torch.randn_like(p)
            else:
                p += 0.05 * torch.randn(p.shape, generator=generator, dtype=p.dtype)


def asset_path(kind: str, name: str) -> Path:
    """Prefer a copy inside the repository, fall back to shared/assets."""
    candidates = {
        "tokenizers": [REPO_ROOT / "assets/tokenizers" / name, REPO_ROOT / "crates/premier-text/tokenizers" / name],
        "images": [REPO_ROOT / "assets/images" / name, REPO_ROOT / "tools/reference/assets" / name,
                   REPO_ROOT / "tests/fixtures/images" / name],
    }[kind]
    shared = Path(os.environ.get("PREMIER_SHARED_ASSETS", REPO_ROOT.parent / "shared/assets"))
    candidates.append(shared / kind / name)
    for c in candidates:
        if c.exists():
            return c
    raise FileNotFoundError(f"{kind}/{name} not found in {[str(c) for c in candidates]}")


class Writer:
    """Writes fixture files into the output folder via a temp name + rename."""

    def __init__(self, out: Path, provenance: dict):
        self.out = out
        self.provenance = provenance
        self.written: list[str] = []

    def _atomic(self, name: str, write) -> None:
        target = self.out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        os.close(fd)
        try:
            write(tmp)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self.written.append(name)

    def safetensors(self, name: str, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        # clone: safetensors refuses tensors that share memory (e.g. final == last step)
        tensors = {k: v.detach().clone().contiguous() for k, v in tensors.items()}
        self._atomic(name, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))

    def json(self, name: str, obj, provenance: bool = True) -> None:
        if provenance:
            obj = dict(obj, provenance=self.provenance)
        text = json.dumps(obj, indent=1, ensure_ascii=False)
        self._atomic(name, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))

    def text(self, name: str, text: str) -> None:
        self._atomic(name, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def tensor_table(tensors: dict[str, torch.Tensor]) -> dict:
    """The jsons' `tensors` field: name -> [shape, dtype], sorted by name."""
    return {k: [list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in sorted(tensors.items())}


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()
