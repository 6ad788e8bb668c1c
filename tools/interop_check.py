#!/usr/bin/env python3
"""Weights in and out of ssmtrain, checked against Hugging Face transformers (docs/interop.md).

    tools/interop_check.py build/ssmtrain [--workdir DIR] [--keep]

1. ssmtrain -> transformers: trains a Mamba (configs/quickstart.yaml) and a Mamba-2
   (configs/mamba2_text.yaml, shrunk to 2 layers, 2 groups, chunks shorter than the input)
   for a few steps on the CPU, on the repository's docs as text, exports each with `ssmtrain export --format hf`, loads the
   directory with MambaForCausalLM / Mamba2ForCausalLM.from_pretrained (no missing or
   unexpected tensors allowed) and compares its logits with `ssmtrain logits` on the same
   tokens.
2. mamba_ssm names: the `--format mamba_ssm` export must hold exactly mamba_ssm's
   MambaLMHeadModel names (backbone.embedding.weight, lm_head.weight tied, conv (C, 1, K));
   mamba_ssm itself needs CUDA to install, so its file is loaded into transformers after the
   one documented rename (embedding -> embeddings, lm_head dropped after checking it equals
   the embedding) and compared the same way.
3. transformers -> ssmtrain: random MambaForCausalLM and Mamba2ForCausalLM (vocabularies
   that are not multiples of 8, dt rank not the default, Mamba-2 with 2 groups and with 1)
   saved with save_pretrained, imported with `ssmtrain import`, compared through
   `ssmtrain logits`.
   The Mamba-2 saved in bf16 too (widened to f32 on import). An untied Mamba-2 head must be
   refused with exit code 2.

Every comparison is in fp32 on the CPU: relative difference = max|ours - theirs| /
max|theirs| over all logits, required <= 1e-4. Both sides compute the same functions in
fp32 with different summation orders (a sequential scan against SSD chunks, different GEMM
blocking), which moves the last bits only: a few ulps (~1e-7 relative) per reduction,
growing at most with the square root of the number of terms, gives ~1e-6; 1e-4 leaves room
for that and still fails by orders of magnitude on any mapping mistake. Each comparison
also perturbs the reference model (D of layer 0 by 0.05) and requires the difference then
to exceed the tolerance, so a check that cannot fail would be noticed.

Some transformers releases (5.17 among them) normalise Mamba-2's gated RMSNorm over the whole
d_inner and ignore n_groups, unlike mamba_ssm, later transformers and ssmtrain. The check
probes the installed norm; where it ignores the groups, each n_groups > 1 comparison prints
its difference against that norm and then compares with the per-group norm put in its place
(the n_groups = 1 import compares unpatched in every version).

Exit codes: 0 all passed, 1 a check failed, 77 transformers or torch is not installed
(the CTest that runs this skips).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

try:
    import numpy as np
    import torch
    import transformers
    from safetensors.numpy import load_file, save_file
    from transformers import Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM
except ImportError as e:  # the CTest reads 77 as "skipped"
    print(f"interop_check: skipped: {e}")
    sys.exit(77)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLERANCE = 1e-4
failures = []


def run(cmd, expect=0):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != expect:
        sys.stdout.write(p.stdout + p.stderr)
        raise SystemExit(f"interop_check: `{' '.join(cmd[:3])} ...` exited {p.returncode}, expected {expect}")
    return p.stdout + p.stderr


def ours_logits(ssmtrain, ckpt, ids, workdir):
    out = os.path.join(workdir, "logits.safetensors")
    run([ssmtrain, "logits", ckpt, "--ids", " ".join(str(int(i)) for i in ids), "--out", out])
    return load_file(out)["logits"][0]


def their_logits(model, ids):
    with torch.no_grad():
        return model(torch.from_numpy(np.asarray(ids, dtype=np.int64)[None])).logits[0].float().numpy()


def rel_diff(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def mamba2_norm_is_grouped():
    """Whether this transformers' Mamba-2 gated RMSNorm normalises each of the n_groups groups
    of d_inner separately, as mamba_ssm's RMSNormGated(group_size=d_inner/ngroups) and ssmtrain
    do. Some releases (5.17 among them) normalise over the whole d_inner and ignore n_groups,
    which changes the function of every model with n_groups > 1. Probed on the norm itself:
    two groups of very different scale give different outputs under the two definitions."""
    cfg = Mamba2Config(vocab_size=16, hidden_size=32, state_size=8, num_hidden_layers=1, expand=2,
                       num_heads=4, head_dim=16, n_groups=2)
    norm = Mamba2ForCausalLM(cfg).backbone.layers[0].mixer.norm
    x = torch.randn(2, 3, 64)
    x[..., 32:] *= 10.0
    with torch.no_grad():
        y = norm(x, None)
        g = x.view(2, 3, 2, 32)
        ref = (g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)).view(2, 3, 64)
    return bool(torch.allclose(y, ref * norm.weight, rtol=1e-5, atol=1e-6))


def group_the_norms(model):
    """Gives every Mamba-2 layer of `model` the per-group gated RMSNorm (mamba_ssm's definition)."""
    for layer in model.backbone.layers:
        mixer = layer.mixer
        norm, groups = mixer.norm, mixer.n_groups

        def forward(hidden_states, gate=None, norm=norm, groups=groups):
            h = hidden_states.to(torch.float32)
            if gate is not None:
                h = h * torch.nn.functional.silu(gate.to(torch.float32))
            g = h.view(*h.shape[:-1], groups, h.shape[-1] // groups)
            g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
            return norm.weight * g.view(h.shape).to(hidden_states.dtype)

        norm.forward = forward
    model.grouped_norm_patched = True
    return model


GROUPED_NORM = None  # set in main()


def compare(name, ours, model, ids):
    if isinstance(model, Mamba2ForCausalLM) and model.config.n_groups > 1 and not GROUPED_NORM:
        # This transformers computes another function for n_groups > 1 (its norm ignores the
        # groups): show that difference once per model, then compare with the per-group norm,
        # the definition mamba_ssm and ssmtrain share. n_groups = 1 compares unpatched.
        if not getattr(model, "grouped_norm_patched", False):
            r_own = rel_diff(ours, their_logits(model, ids))
            print(f"note {name}: against this transformers' whole-width gated norm: relative {r_own:.3e} "
                  f"(expected for n_groups = {model.config.n_groups}); compared below with the per-group norm")
            group_the_norms(model)
        name += " [per-group norm]"
    ref = their_logits(model, ids)
    if ours.shape != ref.shape:
        failures.append(f"{name}: logits shape {ours.shape} vs transformers {ref.shape}")
        print(f"FAIL {name}: shapes {ours.shape} vs {ref.shape}")
        return
    r = rel_diff(ours, ref)
    # The control: the same comparison against a slightly changed model must fail.
    with torch.no_grad():
        model.backbone.layers[0].mixer.D.add_(0.05)
    r_perturbed = rel_diff(ours, their_logits(model, ids))
    with torch.no_grad():
        model.backbone.layers[0].mixer.D.sub_(0.05)
    ok = r <= TOLERANCE and r_perturbed > TOLERANCE
    print(f"{'ok  ' if ok else 'FAIL'} {name}: logits {tuple(ours.shape)}, max|diff| {np.abs(ours - ref).max():.3e}, "
          f"relative {r:.3e} (<= {TOLERANCE:g}); with D of layer 0 + 0.05: relative {r_perturbed:.3e}")
    if not ok:
        failures.append(name)


def load_hf(cls, path):
    model, info = cls.from_pretrained(path, dtype=torch.float32, output_loading_info=True)
    bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if bad:
        failures.append(f"{path}: transformers reports {bad}")
        print(f"FAIL {path}: transformers reports {bad}")
    return model.eval()


def check_mamba_ssm_names(path, n_layer, mixer):
    """The tensor names and shapes mamba_ssm's MambaLMHeadModel.state_dict() has."""
    t = load_file(os.path.join(path, "model.safetensors"))
    want = {"backbone.embedding.weight", "lm_head.weight", "backbone.norm_f.weight"}
    per_layer = ["norm.weight", "mixer.in_proj.weight", "mixer.conv1d.weight", "mixer.conv1d.bias", "mixer.A_log",
                 "mixer.D", "mixer.out_proj.weight"]
    per_layer += (["mixer.x_proj.weight", "mixer.dt_proj.weight", "mixer.dt_proj.bias"] if mixer == "mamba"
                  else ["mixer.dt_bias", "mixer.norm.weight"])
    for i in range(n_layer):
        want |= {f"backbone.layers.{i}.{n}" for n in per_layer}
    problems = []
    if set(t) != want:
        problems.append(f"names differ: extra {sorted(set(t) - want)[:3]}, missing {sorted(want - set(t))[:3]}")
    if not np.array_equal(t["lm_head.weight"], t["backbone.embedding.weight"]):
        problems.append("lm_head.weight is not the embedding")
    conv = t["backbone.layers.0.mixer.conv1d.weight"]
    if conv.ndim != 3 or conv.shape[1] != 1:
        problems.append(f"conv1d.weight has shape {conv.shape}, expected (C, 1, K)")
    cfg = json.load(open(os.path.join(path, "config.json")))
    layer = cfg["ssm_cfg"]["layer"]
    if layer != ("Mamba1" if mixer == "mamba" else "Mamba2"):
        problems.append(f"ssm_cfg.layer is {layer}")
    print(f"{'ok  ' if not problems else 'FAIL'} mamba_ssm names of {mixer}: {len(t)} tensors"
          + ("" if not problems else ": " + "; ".join(problems)))
    if problems:
        failures.append(f"mamba_ssm names of {mixer}")
    return t


def mamba_ssm_to_hf(path, dst, hf_config_dir):
    """mamba_ssm's state dict under transformers' names: the one rename, lm_head dropped."""
    t = load_file(os.path.join(path, "model.safetensors"))
    del t["lm_head.weight"]
    t["backbone.embeddings.weight"] = t.pop("backbone.embedding.weight")
    os.makedirs(dst, exist_ok=True)
    save_file(t, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
    shutil.copy(os.path.join(hf_config_dir, "config.json"), dst)


def training_text(workdir):
    """The repository's docs as one text file: real text on any checkout, so the check does not
    depend on the gcide dictionary package the shipped configs read."""
    path = os.path.join(workdir, "docs.txt")
    with open(path, "w", encoding="utf-8") as out:
        docs = os.path.join(ROOT, "docs")
        for name in sorted(os.listdir(docs)):
            if name.endswith(".md"):
                with open(os.path.join(docs, name), encoding="utf-8") as f:
                    out.write(f.read())
    return path


def train_small(ssmtrain, config, run_dir, overrides, text):
    run([ssmtrain, "train", config, "--run-dir", run_dir, "--quiet", "train.eval_every=0", "train.sample_tokens=0",
         "train.device=cpu", "train.precision=fp32", "schedule.warmup_steps=2", "data.path=" + text] + overrides)
    ckpts = sorted(os.listdir(os.path.join(run_dir, "checkpoints")))
    return os.path.join(run_dir, "checkpoints", ckpts[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ssmtrain", help="path of the ssmtrain binary")
    ap.add_argument("--workdir", help="keep the files here (default: a temp dir, removed)")
    args = ap.parse_args()
    ssmtrain = os.path.abspath(args.ssmtrain)
    workdir = args.workdir or tempfile.mkdtemp(prefix="interop_check_")
    os.makedirs(workdir, exist_ok=True)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    global GROUPED_NORM
    GROUPED_NORM = mamba2_norm_is_grouped()
    print("Mamba-2 gated RMSNorm: " + ("per group of d_inner / n_groups, as mamba_ssm and ssmtrain" if GROUPED_NORM else
          "over the whole d_inner, ignoring n_groups (unlike mamba_ssm and ssmtrain; see docs/interop.md)"))
    text = training_text(workdir)

    # 1 and 2: trained ssmtrain models out.
    exports = [
        ("mamba", MambaForCausalLM, os.path.join(ROOT, "configs/quickstart.yaml"),
         ["budget.steps=10", "train.seq_len=64"], 2),
        ("mamba2", Mamba2ForCausalLM, os.path.join(ROOT, "configs/mamba2_text.yaml"),
         ["budget.steps=6", "model.n_layer=2", "train.batch_size=4", "train.seq_len=96", "model.ngroups=2",
          "model.chunk_size=32"], 2),
    ]
    for mixer, cls, config, overrides, n_layer in exports:
        ckpt = train_small(ssmtrain, config, os.path.join(workdir, f"run_{mixer}"), overrides, text)
        ids = rng.integers(0, 256, size=128)  # byte-level models; 128 tokens = 4 SSD chunks of 32
        ours = ours_logits(ssmtrain, ckpt, ids, workdir)
        hf_dir = os.path.join(workdir, f"export_{mixer}_hf")
        run([ssmtrain, "export", ckpt, hf_dir, "--format", "hf"])
        compare(f"export hf {mixer} (trained {ckpt.rsplit('_', 1)[-1][:-3].lstrip('0')} steps)", ours,
                load_hf(cls, hf_dir), ids)
        ms_dir = os.path.join(workdir, f"export_{mixer}_mamba_ssm")
        run([ssmtrain, "export", ckpt, ms_dir, "--format", "mamba_ssm"])
        check_mamba_ssm_names(ms_dir, n_layer, mixer)
        renamed = os.path.join(workdir, f"export_{mixer}_mamba_ssm_as_hf")
        mamba_ssm_to_hf(ms_dir, renamed, hf_dir)
        compare(f"export mamba_ssm {mixer}", ours, load_hf(cls, renamed), ids)

    # 3: random transformers models in.
    imports = [
        ("mamba", MambaForCausalLM(MambaConfig(vocab_size=1000, hidden_size=64, state_size=8, num_hidden_layers=3,
                                               expand=2, conv_kernel=4, time_step_rank=6))),
        ("mamba2", Mamba2ForCausalLM(Mamba2Config(vocab_size=1003, hidden_size=64, state_size=16,
                                                  num_hidden_layers=2, expand=2, num_heads=8, head_dim=16,
                                                  n_groups=2, chunk_size=16, tie_word_embeddings=True))),
        ("mamba2", Mamba2ForCausalLM(Mamba2Config(vocab_size=515, hidden_size=48, state_size=16,
                                                  num_hidden_layers=2, expand=2, num_heads=6, head_dim=16,
                                                  n_groups=1, chunk_size=16, tie_word_embeddings=True))),
    ]
    for mixer, model in imports:
        model = model.eval()
        hf_dir = os.path.join(workdir, f"random_{mixer}_{model.config.vocab_size}_hf")
        model.save_pretrained(hf_dir)
        ckpt = os.path.join(workdir, f"imported_{mixer}_{model.config.vocab_size}.h5")
        run([ssmtrain, "import", hf_dir, ckpt])
        ids = rng.integers(0, model.config.vocab_size, size=100)
        groups = f", {model.config.n_groups} group(s)" if mixer == "mamba2" else ""
        compare(f"import transformers {mixer} (random, vocab {model.config.vocab_size}{groups})",
                ours_logits(ssmtrain, ckpt, ids, workdir), model, ids)

    # Half-precision checkpoints are widened to f32 on import: a bf16 save of the Mamba-2
    # imports to the same function as that bf16 model computed in fp32.
    half = imports[1][1].to(torch.bfloat16)
    half_dir = os.path.join(workdir, "random_mamba2_bf16_hf")
    half.save_pretrained(half_dir)
    ckpt = os.path.join(workdir, "imported_mamba2_bf16.h5")
    run([ssmtrain, "import", half_dir, ckpt])
    ids = rng.integers(0, half.config.vocab_size, size=100)
    compare("import transformers mamba2 saved in bf16 (vs the bf16 weights in fp32)",
            ours_logits(ssmtrain, ckpt, ids, workdir), half.float().eval(), ids)

    # An untied head has no counterpart: refused with exit 2, naming lm_head.weight.
    untied = Mamba2ForCausalLM(Mamba2Config(vocab_size=64, hidden_size=32, state_size=8, num_hidden_layers=1,
                                            num_heads=4, head_dim=16, n_groups=1, tie_word_embeddings=False))
    untied_dir = os.path.join(workdir, "random_mamba2_untied")
    untied.save_pretrained(untied_dir)
    msg = run([ssmtrain, "import", untied_dir, os.path.join(workdir, "untied.h5")], expect=2)
    ok = "lm_head.weight" in msg
    print(f"{'ok  ' if ok else 'FAIL'} untied Mamba-2 head refused (exit 2): {msg.strip()[:120]}")
    if not ok:
        failures.append("untied head message")

    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    if failures:
        print(f"interop_check: {len(failures)} failed: {failures}")
        return 1
    print("interop_check: all passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
