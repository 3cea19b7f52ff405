"""SAE.packed(): the kernel view is cached, and rebuilt whenever the SAE changes."""

from __future__ import annotations

import copy
import pickle

import torch

from helpers import make_sae
from saesteer import Intervention, ops, reference


def test_cached_view_is_reused():
    sae = make_sae("jumprelu", seed=1)
    assert sae.packed() is sae.packed() is sae.packed("cpu") is sae.packed(torch.device("cpu"))


def test_view_follows_every_kind_of_change():
    sae = make_sae("jumprelu", seed=1)
    x = torch.randn(5, sae.d_in)
    iv = Intervention([1, 2, 3], "clamp", 4.0)

    def check():
        torch.testing.assert_close(ops.steer(x, sae, iv), reference.steer(x, copy.deepcopy(sae), iv))
        v = sae.packed()
        assert torch.equal(v.W_enc_T, sae.W_enc.t()) and torch.equal(v.params[1], sae.threshold)
        return v

    v0 = check()
    with torch.no_grad():
        sae.W_enc[:, 1] *= 2  # in place
    v1 = check()
    assert v1 is not v0
    sae.threshold = torch.zeros(sae.d_sae)  # a buffer replaced through setattr
    v2 = check()
    assert v2 is not v1
    sae._buffers["W_dec"] = sae.W_dec * 0.5  # written into the buffer dict directly
    v3 = check()
    assert v3 is not v2 and torch.equal(v3.W_dec, sae.W_dec)
    sae.apply_b_dec_to_input = not sae.apply_b_dec_to_input  # a plain attribute
    v4 = check()
    assert v4 is not v3 and v4.apply_b_dec_to_input == sae.apply_b_dec_to_input
    sae.load_state_dict({k: v.clone() + 1 for k, v in sae.state_dict().items()})  # copy_ into the buffers
    v5 = check()
    assert v5 is not v4
    assert sae.packed() is v5  # and nothing changed since
    sae.eval()
    sae.hook_name = "blocks.3.hook_resid_post"  # attributes the view does not read keep it
    assert sae.packed() is v5


def test_copies_have_their_own_view():
    sae = make_sae("gated", seed=2)
    v = sae.packed()
    for other in (copy.deepcopy(sae), pickle.loads(pickle.dumps(sae))):
        w = other.packed()
        assert w is not v and torch.equal(w.W_enc_T, v.W_enc_T)
        with torch.no_grad():
            other.W_enc.zero_()
        assert other.packed().W_enc_T.abs().sum() == 0 and sae.packed() is v
    half = copy.deepcopy(sae).to(dtype=torch.bfloat16)
    assert half.packed().W_enc_T.dtype == torch.bfloat16 and sae.packed() is v
