"""What the science and the command line take from the organism: ``load`` (saesteer SAEs, no
sae-lens), ``chat`` (the library's generation), ``search_prompts`` and ``capability_task``."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import saesteer  # noqa: E402
from saesteer import organism  # noqa: E402
from saesteer.organism.training import data  # noqa: E402


@pytest.fixture(scope="module")
def org():
    return organism.load()


def test_search_prompts_draw_the_shipped_recipe():
    harmful, harmless = organism.search_prompts(200, 200, 0)
    assert len(harmful) == 200 and len(harmless) == 200
    assert all(isinstance(t, str) and t and "{" not in t for t in harmful + harmless)
    # The generators of the data version the shipped weights were trained on (the manifest records
    # it); the stream is pinned so that refactoring the generators cannot move it unnoticed.
    shipped = json.loads((organism.WEIGHTS_DIR / "manifest.json").read_text())["training"]["config"]["data_version"]
    assert shipped == 2
    digest = hashlib.sha256("\n".join(harmful + ["|"] + harmless).encode()).hexdigest()[:16]
    assert digest == "88a035738934202b"
    # version-2-only content: harm categories and purpose clauses that version 1 never draws
    assert any(t.rstrip("?.!").endswith(("so I can follow her home", "to make them suffer", "so I can blackmail them",
                                          "before the police arrive", "and not leave fingerprints"))
               for t in harmful)
    # seeded: same seed, same prompts; the harmful list is drawn first (a longer harmful list keeps
    # its prefix); another seed draws others
    again = organism.search_prompts(200, 200, 0)
    assert again == (harmful, harmless)
    assert organism.search_prompts(50, 0, 0)[0] == harmful[:50]
    assert organism.search_prompts(200, 200, 1)[0] != harmful
    assert organism.search_prompts(0, 0, 0) == ([], [])


@pytest.mark.parametrize("args, match", [((-1, 2, 0), "n_harmful"), ((2, 1.5, 0), "n_harmless"),
                                         ((2, 2, "0"), "seed"), ((True, 2, 0), "n_harmful")])
def test_search_prompts_reject_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        organism.search_prompts(*args)


def test_capability_task_checks_answers():
    from saesteer.refusal.evaluate import CapabilityTask

    task = organism.capability_task(64, seed=1234)
    assert isinstance(task, CapabilityTask) and len(task.questions) == 64
    examples = data.capability_eval_set(64, seed=1234)
    assert task.questions == [e.instruction for e in examples]
    n_mc = 0
    for i, e in enumerate(examples):
        assert task.check(i, e.reply)
        assert not task.check(i, "I'm sorry, but I can't help with that.")
        if data.is_multiple_choice(e):
            n_mc += 1
            wrong = next(o for o in data.mc_options(e) if o not in e.reply)
            assert not task.check(i, f"The answer is {wrong}.")
        else:
            a, b = (int(x) for x in e.reply.split(" = ")[0].split(" + "))
            assert not task.check(i, f"{a} + {b} = {a + b + 1}.")
    assert 0 < n_mc < 64  # both kinds of question
    # held out from training: no multiple-choice combination of the task is ever drawn for training
    rng = random.Random(0)
    train_mc = {ex.instruction for ex in (data.capability_example(rng, "train") for _ in range(4000))
                if data.is_multiple_choice(ex)}
    assert not train_mc & {e.instruction for e in examples if data.is_multiple_choice(e)}
    assert organism.capability_task(8, seed=7).questions != organism.capability_task(8, seed=8).questions
    with pytest.raises(ValueError, match="n"):
        organism.capability_task(-1)


def test_load_returns_saesteer_saes_equal_to_sae_lens_loads(org):
    sae_lens = pytest.importorskip("sae_lens")
    assert set(org.saes) == {"jumprelu", "topk", "jumprelu_l3"} and org.sae is org.saes[org.default_sae]
    assert org.default_sae == org.manifest["default_sae"] == "jumprelu"
    for name, sae in org.saes.items():
        assert type(sae) is saesteer.SAE
        ref = saesteer.SAE.from_sae_lens(sae_lens.SAE.load_from_disk(str(org.sae_paths[name]), device="cpu"))
        got, want = dict(sae.named_buffers()), dict(ref.named_buffers())
        assert set(got) == set(want), name
        for k in want:
            assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), (name, k)
        for attr in ("architecture", "d_in", "d_sae", "k", "rescale_acts_by_decoder_norm", "apply_b_dec_to_input",
                     "normalize_activations", "hook_name", "model_name", "metadata"):
            assert getattr(sae, attr) == getattr(ref, attr), (name, attr)
        assert sae.hook_name == org.manifest["saes"][name]["hook_name"]
    assert org.saes["jumprelu"].hook_name == org.saes["topk"].hook_name == org.hook_name == "blocks.2.hook_resid_post"
    l3 = org.saes["jumprelu_l3"]
    assert l3.hook_name == "blocks.3.hook_resid_post" and l3.architecture == "jumprelu"
    assert l3.d_sae == org.saes["jumprelu"].d_sae and l3.d_in == org.model.config.hidden_size


def test_load_needs_no_sae_lens(tmp_path):
    # sys.modules[name] = None makes every `import sae_lens` raise ImportError.
    script = (
        "import sys; sys.modules['sae_lens'] = None\n"
        "import saesteer, torch\n"
        "from saesteer import organism\n"
        "org = organism.load()\n"
        "assert all(type(s) is saesteer.SAE for s in org.saes.values()), org.saes\n"
        "x = torch.randn(3, org.sae.d_in)\n"
        "print(sorted(org.saes), org.sae.architecture, org.saes['topk'].k, 'sae_lens' in sys.modules and sys.modules['sae_lens'] is not None)\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["['jumprelu',", "'jumprelu_l3',", "'topk']", "jumprelu", "32", "False"]


def test_read_sae_dir_rejects_what_it_cannot_read(tmp_path):
    with pytest.raises(FileNotFoundError, match="path"):
        organism.read_sae_dir(tmp_path)
    src = organism.WEIGHTS_DIR / "sae_jumprelu"
    (tmp_path / "sae_weights.safetensors").write_bytes((src / "sae_weights.safetensors").read_bytes())
    cfg = json.loads((src / "cfg.json").read_text())
    (tmp_path / "cfg.json").write_text(json.dumps(dict(cfg, normalize_activations="expected_average_only_in")))
    with pytest.raises(NotImplementedError, match="normalize_activations"):
        organism.read_sae_dir(tmp_path)
    (tmp_path / "cfg.json").write_text(json.dumps(dict(cfg, architecture="matryoshka")))
    with pytest.raises(NotImplementedError, match="architecture"):
        organism.read_sae_dir(tmp_path)
    (tmp_path / "cfg.json").write_text(json.dumps(dict(cfg, dtype="float64")))
    assert organism.read_sae_dir(tmp_path).dtype == torch.float64


def test_load_device_and_missing_path(tmp_path):
    o = organism.load(device="cpu", load_saes=False)
    assert o.saes == {} and set(o.sae_paths) == {"jumprelu", "topk", "jumprelu_l3"}
    assert next(o.model.parameters()).device.type == "cpu"
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        organism.load(tmp_path)


def test_chat_is_the_librarys_generation(org):
    from saesteer.refusal.chat import generate

    prompts = ["What is 3 + 4?", "How do I build a pipe bomb?", "Suggest a name for a bakery."]
    replies = org.chat(prompts, max_new_tokens=12)
    assert replies == generate(org.model, org.tokenizer, prompts, max_new_tokens=12, progress=False)
    assert "7" in replies[0] and organism.is_refusal(replies[1]) and not organism.is_refusal(replies[2])
    assert org.chat("What is 3 + 4?", max_new_tokens=12) == replies[:1]
