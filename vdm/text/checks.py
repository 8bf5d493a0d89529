"""Refusing a checkpoint trained with another frozen text encoder."""

from __future__ import annotations

from vdm.errors import UserError

# Where the folder lies is not what the model learnt from: a moved folder is the same encoder.
IGNORED = ("path",)


def describe(fingerprint: dict | None) -> str:
    """A few words naming a text encoder fingerprint (None: none, or one trained with the run)."""
    if fingerprint is None:
        return "no frozen text encoder"
    sha = str(fingerprint.get("sha256", "?"))[:12]
    return f"the {fingerprint.get('kind', '?')} text encoder with weights {sha}"


def comparable(fingerprint: dict | None) -> dict | None:
    return None if fingerprint is None else {
        k: v for k, v in fingerprint.items() if k not in IGNORED
    }  # fmt: skip


def check_same_text_encoder(stored: dict | None, encoder: object | None, key: str) -> None:
    """Refuse, in one line naming ``key``, a checkpoint whose recorded frozen text encoder
    ``stored`` is not ``encoder`` (other weights, length or dtype; or one has none). A trainable
    encoder has no fingerprint: its weights are in the checkpoint's state dict."""
    current = getattr(encoder, "fingerprint", None)
    if comparable(stored) == comparable(current):
        return
    raise UserError(
        f"{key}: trained with {describe(stored)}, not with {describe(current)}: use the text "
        "encoder it was trained with (its run config's text_encoder=...)."
    )
