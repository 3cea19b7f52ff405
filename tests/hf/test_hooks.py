"""Drop-in steering of HF models: saesteer.steer / attach, positions with a KV cache, padding,
per-row interventions, dtypes, save/load, bad input, directional ablation, activation addition, compile.

Tiny random models built from configs (no downloads). Embeddings are redrawn from N(0, 1) so that the
residual stream has the scale the random test SAEs (tests/helpers.py) fire on.
"""

from __future__ import annotations

import pytest
import torch
from helpers import assert_close_dtype, make_sae, make_sae_lens_sae
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

import saesteer
from saesteer import Intervention, reference

pytestmark = pytest.mark.filterwarnings("ignore:saesteer. backend:RuntimeWarning")

D, V, LAYERS, D_SAE = 32, 128, 3, 64
COMMON = dict(vocab_size=V, pad_token_id=0, bos_token_id=None, eos_token_id=None)


def tiny_model(arch: str = "llama", dtype=torch.float32, seed: int = 0):
    torch.manual_seed(seed)
    if arch == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(n_embd=D, n_layer=LAYERS, n_head=4, n_positions=64, **COMMON))
    else:
        kw = dict(hidden_size=D, intermediate_size=64, num_hidden_layers=LAYERS, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, **COMMON)
        if arch == "gemma2":
            model = Gemma2ForCausalLM(Gemma2Config(head_dim=8, query_pre_attn_scalar=8, sliding_window=16, **kw))
        else:
            model = {"llama": (LlamaForCausalLM, LlamaConfig), "qwen2": (Qwen2ForCausalLM, Qwen2Config)}[arch]
            model = model[0](model[1](**kw))
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_()
    return model.eval().to(dtype)


def layers_of(model):
    return model.transformer.h if hasattr(model, "transformer") else model.model.layers


def no_hooks_left(model) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def ids(batch=2, length=6, seed=1):
    return torch.randint(1, V, (batch, length), generator=torch.Generator().manual_seed(seed))


def active_features(model, sae, layer, x, n=6):
    """The n features that fire most often at layer's output on x (so an ablation changes something)."""
    out = []
    h = layers_of(model)[layer].register_forward_hook(lambda m, a, o: out.append(o))
    with torch.no_grad():
        model(x)
    h.remove()
    f = reference.encode(out[0].float(), sae)
    assert (f > 0).float().mean() > 0.1, "the test SAE should fire on the model's residual stream"
    return (f > 0).flatten(0, 1).sum(0).topk(n).indices.tolist()


def manual_hook(model, layer, kind, sae, iv):
    """The edit computed by hand with saesteer.reference.steer, as a plain forward (pre-)hook."""
    block = layers_of(model)[layer]
    if kind == "resid_post":
        return block.register_forward_hook(lambda m, a, o: reference.steer(o, sae, iv))
    return block.register_forward_pre_hook(lambda m, a: (reference.steer(a[0], sae, iv), *a[1:]))


# ------------------------------------------------------------------------------------------------
# logits against a hand-written hook
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["resid_post", "resid_pre"])
@pytest.mark.parametrize("mode", ["ablate", "clamp"])
@pytest.mark.parametrize("arch", ["llama", "gemma2", "qwen2", "gpt2"])
def test_logits_equal_manual_reference_hook(arch, mode, kind):
    model = tiny_model(arch)
    L = 1
    sae = make_sae("jumprelu", d_in=D, d_sae=D_SAE, hook_name=f"blocks.{L}.hook_{kind}")
    x = ids()
    feats = active_features(model, sae, L, x)
    iv = Intervention(feats, "ablate") if mode == "ablate" else Intervention(feats, "clamp", 4.0)
    with torch.no_grad():
        base = model(x).logits
        h = manual_hook(model, L, kind, sae, iv)
        want = model(x).logits
        h.remove()
        with saesteer.steer(model, sae, iv, backend="torch") as handle:
            assert handle.hook_points == [(L, kind)]
            got = model(x).logits
        after = model(x).logits
        with saesteer.steer(model, sae, iv):  # auto: the fastest built backend
            got_auto = model(x).logits
    assert not torch.equal(want, base)
    assert torch.equal(got, want)
    assert_close_dtype(got_auto, want)
    assert torch.equal(after, base), "leaving the context must restore the logits bit for bit"
    assert no_hooks_left(model)


@pytest.mark.parametrize(
    "iv",
    [Intervention([1, 5, 9], "scale", 1.0), Intervention([2, 3], "add", 0.0), Intervention([], "ablate")],
    ids=["scale1", "add0", "empty"],
)
def test_noop_intervention_is_bit_for_bit(iv):
    model = tiny_model()
    sae = make_sae("jumprelu", d_in=D, d_sae=D_SAE, hook_name="blocks.1.hook_resid_post")
    x = ids()
    with torch.no_grad():
        base = model(x).logits
        with saesteer.steer(model, sae, iv):
            got = model(x).logits
    assert torch.equal(got, base)


def test_several_pairs_at_several_layers():
    model = tiny_model()
    sae_a = make_sae("jumprelu", d_in=D, d_sae=D_SAE, seed=1, hook_name="blocks.0.hook_resid_post")
    sae_b = make_sae("standard", d_in=D, d_sae=D_SAE, seed=2, hook_name="blocks.2.hook_resid_pre")
    iv_a, iv_b = Intervention([0, 1, 2], "clamp", 3.0), Intervention([4, 5], "scale", 0.0)
    x = ids()
    with torch.no_grad():
        hs = [manual_hook(model, 0, "resid_post", sae_a, iv_a), manual_hook(model, 2, "resid_pre", sae_b, iv_b)]
        want = model(x).logits
        for h in hs:
            h.remove()
        with saesteer.steer(model, [(sae_a, iv_a), (sae_b, iv_b)], backend="torch") as handle:
            got = model(x).logits
    assert handle.hook_points == [(0, "resid_post"), (2, "resid_pre")]
    assert torch.equal(got, want)
    assert no_hooks_left(model)


def test_attach_remove_and_enabled_flag():
    model = tiny_model()
    sae = make_sae("jumprelu", d_in=D, d_sae=D_SAE, hook_name="blocks.1.hook_resid_post")
    x = ids()
    with torch.no_grad():
        base = model(x).logits
        handle = saesteer.attach(model, sae, Intervention(list(range(8)), "clamp", 5.0))
        steered = model(x).logits
        handle.enabled = False
        off = model(x).logits
        handle.enabled = True
        on = model(x).logits
        handle.update(Intervention(list(range(8)), "clamp", 0.5))  # same features: values in place
        smaller = model(x).logits
        # An SAE edit has no coefficient (the README lists .coeff for direction handles only).
        with pytest.raises(AttributeError, match="only handles from add_direction or affine_ablation"):
            handle.coeff = 2.0
        handle.remove()
        handle.remove()  # idempotent
        gone = model(x).logits
    assert not torch.equal(steered, base)
    assert torch.equal(off, base) and torch.equal(on, steered)
    assert not torch.equal(smaller, steered)
    assert torch.equal(gone, base) and no_hooks_left(model)


def test_sae_lens_sae_and_positional_base_model_call():
    """An sae_lens SAE is accepted as is; the base model called positionally still finds the padding."""
    model = tiny_model()
    raw = make_sae_lens_sae("jumprelu", D, D_SAE, hook_name="blocks.1.hook_resid_post")
    sae = saesteer.SAE.from_sae_lens(raw)
    iv = Intervention(list(range(10)), "clamp", 4.0)
    x = ids()
    attn = torch.ones_like(x)
    attn[0, :2] = 0
    with torch.no_grad():
        with saesteer.steer(model, sae, iv, backend="torch"):
            want = model.model(input_ids=x, attention_mask=attn).last_hidden_state
        with saesteer.steer(model, raw, iv, backend="torch"):
            got = model.model(x, attn).last_hidden_state
        plain = model.model(x, attn).last_hidden_state
    assert torch.equal(got, want) and not torch.equal(got, plain)
    assert torch.equal(got[0, :2], plain[0, :2]), "left padding (only attended by itself) must not be edited"


# ------------------------------------------------------------------------------------------------
# generation with a KV cache: which tokens are edited
# ------------------------------------------------------------------------------------------------
class Recorder:
    """Per forward: layer L's output before steering (a hook registered first) and layer L+1's input."""

    def __init__(self, model, L):
        blocks = layers_of(model)
        self.raw, self.seen = [], []
        self.handles = [
            blocks[L].register_forward_hook(lambda m, a, o: self.raw.append(o.detach().clone())),
            blocks[L + 1].register_forward_pre_hook(lambda m, a: self.seen.append(a[0].detach().clone())),
        ]

    def remove(self):
        for h in self.handles:
            h.remove()


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("positions", ["generated", "prompt"])
def test_generate_edits_the_right_tokens(positions, use_cache):
    model = tiny_model()
    L, P, new = 1, 5, 4
    sae = make_sae("jumprelu", d_in=D, d_sae=D_SAE, hook_name=f"blocks.{L}.hook_resid_post")
    iv = Intervention(list(range(10)), "clamp", 6.0)
    x = ids(1, P)
    rec = Recorder(model, L)
    with saesteer.steer(model, sae, iv, positions=positions, backend="torch"):
        for _ in range(2):  # a second generate call starts a new sequence
            rec.raw.clear(), rec.seen.clear()
            model.generate(x, max_new_tokens=new, do_sample=False, use_cache=use_cache)
            assert len(rec.seen) == new
            for step, (raw, seen) in enumerate(zip(rec.raw, rec.seen)):
                assert raw.shape[1] == (P if step == 0 or not use_cache else 1) + (0 if use_cache else step)
                start = 0 if step == 0 or not use_cache else P + step - 1  # position of the first token
                pos = torch.arange(start, start + raw.shape[1])
                edited = pos < P if positions == "prompt" else pos >= P
                want = torch.where(edited[None, :, None], reference.steer(raw, sae, iv), raw)
                assert torch.equal(seen, want), f"step {step}"
                assert (seen != raw).any(-1)[0].tolist() == edited.tolist(), f"step {step}"
    rec.remove()
    assert no_hooks_left(model)


def test_strong_clamp_changes_greedy_generation():
    model = tiny_model()
    sae = make_sae("jumprelu", d_in=D, d_sae=D_SAE, hook_name="blocks.1.hook_resid_post")
    x = ids(2, 6)
    base = model.generate(x, max_new_tokens=6, do_sample=False)
    with saesteer.steer(model, sae, Intervention(list(range(16)), "clamp", 20.0), positions="generated"):
        steered = model.generate(x, max_new_tokens=6, do_sample=False)
    assert torch.equal(steered[:, : x.shape[1] + 1], base[:, : x.shape[1] + 1])  # prompt forward untouched
    assert not torch.equal(steered, base)


def test_callable_and_mask_positions():
    model = tiny_model()
    L = 1
    sae = make_sae("jumprelu", d_in=D, d_sae=D_SAE, hook_name=f"blocks.{L}.hook_resid_post")
    iv = Intervention(list(range(10)), "clamp", 6.0)
    x = ids(2, 6)
    rec = Recorder(model, L)
    last_prompt_token = lambda pos, prompt_length: pos == prompt_length - 1  # noqa: E731
    mask = torch.tensor([True, False, False, True, False, False, False])
    for positions, want_cols in [(last_prompt_token, [5]), (mask, [0, 3])]:
        rec.raw.clear(), rec.seen.clear()
        with torch.no_grad(), saesteer.steer(model, sae, iv, positions=positions):
            model(x)
        edited = (rec.seen[0] != rec.raw[0]).any(-1)
        assert edited.nonzero()[:, 1].unique().tolist() == want_cols
    rec.remove()


@pytest.mark.parametrize(
    "mask, match",
    [
        (torch.ones(3, 6, dtype=torch.bool), "the mask has 3 batch rows but the batch has 2"),
        (torch.ones(5, dtype=torch.bool), "covers 5 sequence positions but this forward reaches position 6"),
    ],
)
def test_bad_position_masks_are_named_errors(mask, match):
    model = tiny_model()
    sae = make_sae("jumprelu", d_in=D, d_sae=D_SAE, hook_name="blocks.1.hook_resid_post")
    x = ids(2, 6)
    with torch.no_grad():
        clean = model(x).logits
        with pytest.raises(ValueError, match=match):
            with saesteer.steer(model, sae, Intervention([1], "clamp", 3.0), positions=mask):
                model(x)
        assert no_hooks_left(model)
        assert torch.equal(model(x).logits, clean)


def test_mask_positions_follow_generation():
    """A mask as long as prompt + generated tokens edits exactly its positions across the KV cache."""
    model = tiny_model()
    L = 1
    sae = make_sae("jumprelu", d_in=D, d_sae=D_SAE, hook_name=f"blocks.{L}.hook_resid_post")
    iv = Intervention(list(range(10)), "clamp", 6.0)
    x = ids(1, 4)
    mask = torch.zeros(4 + 3, dtype=torch.bool)
    mask[[1, 5]] = True  # one prompt position, one generated position
    rec = Recorder(model, L)
    with torch.no_grad(), saesteer.steer(model, sae, iv, positions=mask):
        model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=3, do_sample=False)
    edited = [(s != r).any(-1)[0] for s, r in zip(rec.seen, rec.raw)]
    rec.remove()
    assert edited[0].nonzero().flatten().tolist() == [1]  # the prompt forward
    assert [bool(e.any()) for e in edited[1:]] == [False, True]  # positions 4 and 5


# ------------------------------------------------------------------------------------------------
# batches: left padding and per-row interventions
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("positions", ["all", "generated"])
def test_left_padded_batch_equals_one_prompt_at_a_time(positions):
    model = tiny_model()
    L = 1
    sae = make_sae("jumprelu", d_in=D, d_sae=D_SAE, hook_name=f"blocks.{L}.hook_resid_post")
    iv = Intervention(list(range(12)), "clamp", 8.0)
    prompts = [ids(1, 4, seed=2)[0], ids(1, 7, seed=3)[0]]
    T = max(len(p) for p in prompts)
    batch = torch.zeros(2, T, dtype=torch.long)
    attn = torch.zeros(2, T, dtype=torch.long)
    for r, p in enumerate(prompts):
        batch[r, T - len(p):], attn[r, T - len(p):] = p, 1
    gen = dict(max_new_tokens=5, do_sample=False, output_logits=True, return_dict_in_generate=True)
    rec = Recorder(model, L)
    with saesteer.steer(model, sae, iv, positions=positions):
        out = model.generate(batch, attention_mask=attn, **gen)
        pads = attn[0] == 0
        assert torch.equal(rec.seen[0][0, pads], rec.raw[0][0, pads]), "padding tokens must not be edited"
        rec.remove()
        singles = [model.generate(p[None], **gen) for p in prompts]
    for r, (p, single) in enumerate(zip(prompts, singles)):
        assert torch.equal(out.sequences[r, T:], single.sequences[0, len(p):])
        for got, want in zip(out.logits, single.logits):
            assert_close_dtype(got[r], want[0])


def test_per_row_interventions_equal_separate_runs():
    model = tiny_model()
    sae = make_sae("jumprelu", d_in=D, d_sae=D_SAE, hook_name="blocks.1.hook_resid_post")
    rows = [
        Intervention([0, 1, 2, 3], "ablate"),
        Intervention([2, 7], "clamp", 5.0),
        None,
        Intervention([1, 2], "scale", [0.0, 3.0]),
        Intervention([4, 5, 6], "clamp", [-2.0, 1.0, 9.0]),  # another clamp set: its own group
        Intervention([3, 9], "ablate"),
    ]
    x = ids(1, 6).expand(len(rows), -1)
    with torch.no_grad():
        with saesteer.steer(model, sae, rows, backend="torch"):
            got = model(x).logits
        with saesteer.steer(model, sae, rows):
            got_auto = model(x).logits
        for r, iv in enumerate(rows):
            if iv is None:
                want = model(x[:1]).logits
            else:
                with saesteer.steer(model, sae, iv, backend="torch"):
                    want = model(x[:1]).logits
            assert_close_dtype(got[r], want[0])
            assert_close_dtype(got_auto[r], want[0])
    assert not torch.equal(got[0], got[2])


def test_per_row_count_must_match_batch():
    model = tiny_model()
    sae = make_sae("jumprelu", d_in=D, d_sae=D_SAE, hook_name="blocks.1.hook_resid_post")
    with pytest.raises(ValueError, match="2 per-row interventions but the batch has 3 rows"):
        with torch.no_grad(), saesteer.steer(model, sae, [Intervention([1], "ablate"), None]):
            model(ids(3, 5))
    assert no_hooks_left(model)


# ------------------------------------------------------------------------------------------------
# dtypes and the save/load path
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model_dtype,sae_dtype", [(torch.bfloat16, torch.float32), (torch.float32, torch.bfloat16)])
def test_model_and_sae_in_different_dtypes(model_dtype, sae_dtype):
    model = tiny_model(dtype=model_dtype)
    sae = make_sae("jumprelu", d_in=D, d_sae=D_SAE, dtype=sae_dtype, hook_name="blocks.1.hook_resid_post")
    iv = Intervention(list(range(10)), "clamp", 4.0)
    x = ids()
    with torch.no_grad():
        base = model(x).logits
        h = manual_hook(model, 1, "resid_post", sae, iv)  # the reference computes in fp32 either way
        want = model(x).logits
        h.remove()
        with saesteer.steer(model, sae, iv):
            got = model(x).logits
        with saesteer.steer(model, sae, Intervention([3, 4], "scale", 1.0)):
            noop = model(x).logits
    assert got.dtype == model_dtype and sae.dtype == sae_dtype  # the user's SAE is left as it was
    assert not torch.equal(want, base)
    assert_close_dtype(got, want, torch.bfloat16)
    assert torch.equal(noop, base)


def test_save_pretrained_then_from_pretrained(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    sae = make_sae("jumprelu", d_in=D, d_sae=D_SAE, hook_name="blocks.2.hook_resid_post")
    iv = Intervention(list(range(10)), "clamp", 4.0)
    x = ids()
    with torch.no_grad():
        with saesteer.steer(model, sae, iv):
            want = model(x).logits
        with saesteer.steer(loaded, sae, iv):
            got = loaded(x).logits
        base = loaded(x).logits
    assert torch.equal(got, want) and not torch.equal(got, base)


# ------------------------------------------------------------------------------------------------
# bad input: clear errors, nothing left registered
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "sae_kw,call_kw,match",
    [
        (dict(d_in=48, hook_name="blocks.1.hook_resid_post"), {}, "d_in=48 but the model's hidden size is 32"),
        (dict(hook_name="blocks.7.hook_resid_post"), {}, "layer: 7 is out of range; the model has 3"),
        (dict(hook_name="blocks.1.hook_resid_post"), dict(layer=3), "layer: 3 is out of range"),
        (dict(hook_name="blocks.1.hook_mlp_out"), {}, "'blocks.1.hook_mlp_out' is not supported"),
        (dict(hook_name="encoder.something"), {}, "unknown hook name 'encoder.something'"),
        (dict(hook_name=None), {}, "has no hook_name.*pass layer=L"),
        (dict(hook_name="blocks.1.hook_resid_post"), dict(hook="resid_mid"), "unknown hook name 'resid_mid'"),
        (dict(hook_name="blocks.1.hook_resid_post"), dict(positions="decode"), "positions: expected one of"),
    ],
)
def test_bad_input_raises_before_registering(sae_kw, call_kw, match):
    model = tiny_model()
    kw = dict(d_in=D, d_sae=D_SAE)
    kw.update(sae_kw)
    sae = make_sae("jumprelu", **kw)
    good = make_sae("jumprelu", d_in=D, d_sae=D_SAE, hook_name="blocks.0.hook_resid_post")
    iv = Intervention([1, 2], "ablate")
    with pytest.raises(ValueError, match=match):
        saesteer.attach(model, sae, iv, **call_kw)
    with pytest.raises(ValueError, match=match):  # a valid pair first: still nothing registered
        saesteer.attach(model, [(good, iv), (sae, iv)], **call_kw)
    assert no_hooks_left(model)


def test_unknown_model_says_how_to_pass_layers():
    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList([torch.nn.Linear(D, D) for _ in range(2)])

        def forward(self, x):
            for b in self.blocks:
                x = b(x)
            return x

    w = Wrapper()
    sae = make_sae("jumprelu", d_in=D, d_sae=D_SAE, hook_name="blocks.1.hook_resid_pre")
    iv = Intervention([0, 1, 2], "clamp", 5.0)
    with pytest.raises(ValueError, match=r"layers=model\.my\.blocks"):
        saesteer.attach(w, sae, iv)
    assert no_hooks_left(w)
    x = torch.randn(3, 4, D)
    with torch.no_grad():
        with saesteer.steer(w, sae, iv, layers=w.blocks, backend="torch"):
            got = w(x)
        want = w.blocks[1](reference.steer(w.blocks[0](x), sae, iv))
    assert torch.equal(got, want) and not torch.equal(got, w(x))


def test_exception_in_body_removes_every_hook():
    model = tiny_model()
    sae_a = make_sae("jumprelu", d_in=D, d_sae=D_SAE, hook_name="blocks.0.hook_resid_post")
    sae_b = make_sae("jumprelu", d_in=D, d_sae=D_SAE, hook_name="blocks.2.hook_resid_pre")
    with pytest.raises(KeyError):
        with saesteer.steer(model, [(sae_a, Intervention([1], "ablate")), (sae_b, Intervention([2], "ablate"))],
                            positions="generated"):
            assert not no_hooks_left(model)
            raise KeyError("boom")
    assert no_hooks_left(model)


# ------------------------------------------------------------------------------------------------
# Arditi et al.: directional ablation and activation addition
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2"])
def test_directional_ablation_removes_the_direction_everywhere(arch):
    model = tiny_model(arch)
    r = torch.randn(D, generator=torch.Generator().manual_seed(5))
    blocks = layers_of(model)
    x = ids()

    def residuals(handle=None):
        seen = []  # every layer's input (after the handle's own pre-hooks, which run first) and the last output
        hs = [b.register_forward_pre_hook(lambda m, a: seen.append(a[0])) for b in blocks]
        hs.append(blocks[-1].register_forward_hook(lambda m, a, o: seen.append(o)))
        with torch.no_grad():
            model(x)
        for h in hs:
            h.remove()
        return torch.stack([(s @ r).abs().max() / s.norm(dim=-1).max() for s in seen])

    before = residuals()
    with saesteer.directional_ablation(model, r * 3.0):
        after = residuals()
    assert before.min() > 1e-3
    assert after.max() < 1e-6, "no layer input nor the last layer's output may keep a component along r"
    assert no_hooks_left(model)


def test_add_direction_matches_manual_hook_and_coeff_updates():
    model = tiny_model()
    d = torch.randn(D, generator=torch.Generator().manual_seed(6))
    x = ids()
    block = model.model.layers[1]
    with torch.no_grad():
        wants = []
        for c in (2.0, -1.0):
            h = block.register_forward_pre_hook(lambda m, a, c=c: ((a[0].float() + c * d).to(a[0].dtype), *a[1:]))
            wants.append(model(x).logits)
            h.remove()
        with saesteer.add_direction(model, d, layer=1, coeff=2.0) as handle:
            got = model(x).logits
            handle.coeff = -1.0
            got2 = model(x).logits
    assert torch.equal(got, wants[0]) and torch.equal(got2, wants[1])
    assert no_hooks_left(model)


def test_affine_ablation_sets_the_projection_to_the_reference():
    # Marshall et al.'s affine concept editing: x - (x.r)r + (ref.r)r + coeff*d at one layer's input.
    model = tiny_model()
    g = torch.Generator().manual_seed(7)
    d, ref = torch.randn(D, generator=g) * 3.0, torch.randn(D, generator=g)
    r = d / d.norm()
    x = ids()
    block = model.model.layers[1]
    seen = []
    with torch.no_grad():
        wants = []
        for c in (0.0, 1.0):
            h = block.register_forward_pre_hook(
                lambda m, a, c=c: ((a[0].float() - ((a[0].float() @ r) - ref @ r).unsqueeze(-1) * r + c * d).to(a[0].dtype), *a[1:]),
                prepend=True)
            wants.append(model(x).logits)
            h.remove()
        with saesteer.affine_ablation(model, d, ref, layer=1) as handle:
            probe = block.register_forward_pre_hook(lambda m, a: seen.append(a[0]))  # runs after the handle's
            got = model(x).logits
            proj = seen[-1] @ r
            handle.coeff = 1.0
            got2 = model(x).logits
    probe.remove()
    torch.testing.assert_close(proj, torch.full_like(proj, float(ref @ r)), atol=1e-4, rtol=0)
    assert torch.equal(got, wants[0]) and torch.equal(got2, wants[1])
    assert no_hooks_left(model)


def test_affine_ablation_bad_input_names_the_argument():
    model = tiny_model()
    d = torch.randn(D)
    with pytest.raises(ValueError, match="reference: length 5"):
        saesteer.affine_ablation(model, d, torch.randn(5), layer=1)
    with pytest.raises(ValueError, match="direction: the zero vector"):
        saesteer.affine_ablation(model, torch.zeros(D), d, layer=1)
    with pytest.raises(ValueError, match="layer: 9 is out of range"):
        saesteer.affine_ablation(model, d, d, layer=9)
    assert no_hooks_left(model)


# ------------------------------------------------------------------------------------------------
# torch.compile: attach once, then compile; toggle and update without recompiling
# ------------------------------------------------------------------------------------------------
def test_compiled_model_sees_enabled_flag_and_value_updates():
    import torch._dynamo

    torch._dynamo.reset()
    model = tiny_model()
    sae = make_sae("jumprelu", d_in=D, d_sae=D_SAE, hook_name="blocks.1.hook_resid_post")
    feats = list(range(10))
    x = ids()
    with torch.no_grad():
        base = model(x).logits
        want = {}
        for v in (5.0, 1.0):
            with saesteer.steer(model, sae, Intervention(feats, "clamp", v), backend="torch"):
                want[v] = model(x).logits
        handle = saesteer.attach(model, sae, Intervention(feats, "clamp", 5.0), backend="torch")
        compiled = torch.compile(model, backend="eager")
        first = compiled(x).logits
        with torch._dynamo.config.patch(error_on_recompile=True):
            handle.enabled = False
            off = compiled(x).logits
            handle.enabled = True
            handle.update(Intervention(feats, "clamp", 1.0))
            updated = compiled(x).logits
        handle.remove()
    torch._dynamo.reset()
    assert_close_dtype(first, want[5.0])
    assert_close_dtype(off, base)
    assert_close_dtype(updated, want[1.0])
    assert not torch.allclose(updated, want[5.0])
