"""Training the refusal organism: the recipe's data (:mod:`.data`, :mod:`.grammar`), the tokenizer
(:mod:`.tokenizer`), the chat model, gates and manifest (:mod:`.train`) and its SAEs (:mod:`.saes`,
which needs sae-lens). ``saesteer organism train`` runs :func:`.train.train_organism`.

Loading and using a trained organism needs none of this: see :mod:`saesteer.organism`.
"""
