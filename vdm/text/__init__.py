"""Text encoders: captions → :class:`TextEmbedding` (tokens, mask, pooled) for the denoisers.

Every encoder has ``encode(list[str]) -> TextEmbedding``, ``dim`` (the token and pooled width),
``max_length`` (the padded length ``L``: every call pads to it, so embeddings of one encoder
always stack), ``trainable`` and ``fingerprint`` (None for an encoder trained with the run; a
dict naming the weights of a frozen one, recorded in checkpoints). The null prompt, for
classifier-free guidance and caption dropout, is the embedding of ``""``, never zeros.
"""

from vdm.models.text_embedding import TextEmbedding
from vdm.text.checks import check_same_text_encoder
from vdm.text.tiny import TinyTextEncoder


def load_text_encoder(*args, **kwargs):
    """:func:`vdm.text.load.load_text_encoder`, imported on use: transformers is optional."""
    from vdm.text.load import load_text_encoder as load

    return load(*args, **kwargs)


__all__ = ["TextEmbedding", "TinyTextEncoder", "check_same_text_encoder", "load_text_encoder"]
