"""An optional local tokenizer for the server: text prompts in, text completions out.

:func:`load_tokenizer` reads ``tokenizer.json`` (the Hugging Face ``tokenizers``
format) from a local directory; nothing is downloaded. The end-of-sequence token, the
server's stop token, comes from the model's files beside it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as _HFTokenizer

TOKENIZER_FILE = "tokenizer.json"

_REPLACEMENT = "\ufffd"


class Tokenizer:
    """Text to token ids and back, with the model's end-of-sequence token
    (``eos_token_id``, None when the model's files name none)."""

    def __init__(self, tokenizer: _HFTokenizer, eos_token_id: int | None = None) -> None:
        self._tokenizer = tokenizer
        self.eos_token_id = eos_token_id

    @property
    def vocab_size(self) -> int:
        """Token ids this tokenizer knows, added tokens included."""
        return int(self._tokenizer.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str) -> list[int]:
        """The token ids of ``text``, with the special tokens the tokenizer adds
        (a beginning-of-sequence token, for instance)."""
        return list(self._tokenizer.encode(text, add_special_tokens=True).ids)

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids``, special tokens left out."""
        return str(self._tokenizer.decode(list(ids), skip_special_tokens=True))

    def token_to_id(self, token: str) -> int | None:
        """The id of the token spelt ``token``, None when there is none."""
        found = self._tokenizer.token_to_id(token)
        return None if found is None else int(found)

    def stream(self) -> IncrementalDecoder:
        """A decoder for one sequence's tokens as they arrive."""
        return IncrementalDecoder(self)


class IncrementalDecoder:
    """Text of a token stream piece by piece: each piece is what the new token adds to
    the text of all the tokens so far. A token that ends inside a multi-byte
    character adds nothing until the character is complete; the pieces joined are the
    decoded text of the whole sequence."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix = 0  # decoding starts here, for context (leading spaces)
        self._read = 0  # text of ids before this has been returned

    def add(self, token: int) -> str:
        """Take one token; return the text it completes (perhaps empty)."""
        self._ids.append(token)
        return self._advance(final=False)

    def flush(self) -> str:
        """The text still held back at the end of the sequence."""
        return self._advance(final=True)

    def _advance(self, *, final: bool) -> str:
        decode = self._tokenizer.decode
        before = decode(self._ids[self._prefix : self._read])
        after = decode(self._ids[self._prefix :])
        if len(after) <= len(before) or (after.endswith(_REPLACEMENT) and not final):
            return ""
        self._prefix = self._read
        self._read = len(self._ids)
        return after[len(before) :]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _first_id(value: object) -> int | None:
    """An ``eos_token_id`` entry: an id or a list of ids (the first is taken)."""
    if isinstance(value, list) and value:
        value = value[0]
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _eos_token_id(directory: Path, tokenizer: _HFTokenizer) -> int | None:
    """The end-of-sequence id named by ``generation_config.json``, else ``config.json``,
    else ``tokenizer_config.json``'s ``eos_token`` (a token spelling)."""
    for name in ("generation_config.json", "config.json"):
        found = _first_id(_read_json(directory / name).get("eos_token_id"))
        if found is not None:
            return found
    token = _read_json(directory / "tokenizer_config.json").get("eos_token")
    if isinstance(token, dict):
        token = token.get("content")
    if isinstance(token, str):
        found_id = tokenizer.token_to_id(token)
        return None if found_id is None else int(found_id)
    return None


def load_tokenizer(directory: str | Path | None) -> Tokenizer | None:
    """The tokenizer in ``directory`` (its ``tokenizer.json``); None when
    ``directory`` is None or holds no ``tokenizer.json``."""
    if directory is None:
        return None
    path = Path(directory)
    file = path / TOKENIZER_FILE
    if not file.is_file():
        return None
    tokenizer = _HFTokenizer.from_file(str(file))
    return Tokenizer(tokenizer, _eos_token_id(path, tokenizer))
