import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # tests/helpers.py

torch.set_num_threads(2)

SHARED_REFUSAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "refusal"


@pytest.fixture(scope="session")
def refusal_data_dir() -> Path:
    """../shared/data/refusal (development data, not part of the product); skip when absent."""
    if not (SHARED_REFUSAL / "harmful_val.json").is_file():
        pytest.skip(f"refusal data not found at {SHARED_REFUSAL}")
    return SHARED_REFUSAL


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same RNG state, so a failure reproduces."""
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_chat(tmp_path_factory):
    """``(model, tokenizer, sae, dir)``: a tiny random Llama chat model + BPE tokenizer with a chat
    template, saved with ``save_pretrained`` and loaded back the way a user would, and a random
    JumpReLU SAE (sae-lens's own class, saved in its format in ``dir/sae``) on
    ``blocks.1.hook_resid_post``. Plumbing only: it does not refuse anything."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from helpers import make_sae_lens_sae
    from saesteer.organism.training.tokenizer import train_tokenizer
    from saesteer.refusal.data import shipped_prompts

    texts = shipped_prompts("harmful") + shipped_prompts("harmless") + ["I'm sorry, but I can't help with that.", "Sure! Here is how."]
    tok = train_tokenizer(texts * 4, vocab_size=400)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny_chat")
    LlamaForCausalLM(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    model = AutoModelForCausalLM.from_pretrained(d).eval()
    tok = AutoTokenizer.from_pretrained(d)
    sl = make_sae_lens_sae("jumprelu", d_in=32, d_sae=96, seed=0, hook_name="blocks.1.hook_resid_post")
    sl.save_model(d / "sae")
    import saesteer

    return model, tok, saesteer.load_sae(d / "sae"), d
