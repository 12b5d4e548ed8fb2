"""Tokenizers for the command line: a byte-level one for the built-in model, a HF tokenizer.json loader.

    ByteTokenizer        ids 0/1/2 = pad/bos/eos, byte b -> b + 3 (vocab 259); decodes UTF-8 with replacement
    load_tokenizer(dir)  tokenizer.json of a checkpoint through the `tokenizers` package, a ByteTokenizer where the
                         directory holds ByteTokenizer.MARKER (a byte-level model saved by `jamba-ext train`), or None
    StreamDecoder        turns a growing id list into printable text increments (no half UTF-8 characters)
"""
import os
from typing import List, Sequence


class ByteTokenizer:
    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2
    offset = 3
    vocab_size = 256 + offset
    MARKER = "byte_tokenizer.txt"  # in a checkpoint directory: its model reads bytes (jamba-ext train --save writes it)

    def encode(self, text: str, add_bos: bool = True) -> List[int]:
        ids = [b + self.offset for b in text.encode("utf-8")]
        return [self.bos_token_id] + ids if add_bos else ids

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i - self.offset for i in ids if self.offset <= i < self.vocab_size).decode("utf-8", "replace")


class HFTokenizer:
    """A `tokenizers.Tokenizer` from tokenizer.json behind the encode/decode interface above."""

    def __init__(self, path: str):
        from tokenizers import Tokenizer
        self.tok = Tokenizer.from_file(path)

    def encode(self, text: str, add_bos: bool = True) -> List[int]:
        return self.tok.encode(text, add_special_tokens=add_bos).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)


def load_tokenizer(model_dir: str):
    """The checkpoint's tokenizer.json (an HFTokenizer), a ByteTokenizer for a byte-level model saved by
    `jamba-ext train`, or None when there is neither. ImportError without `tokenizers`."""
    path = os.path.join(model_dir, "tokenizer.json")
    if not os.path.isfile(path):
        return ByteTokenizer() if os.path.isfile(os.path.join(model_dir, ByteTokenizer.MARKER)) else None
    try:
        import tokenizers  # noqa: F401
    except ImportError:
        raise ImportError(f"{path} needs the `tokenizers` package (pip install tokenizers)") from None
    return HFTokenizer(path)


class StreamDecoder:
    """Feed token ids one at a time; returns the new text since the last call. Text ending in an
    incomplete character (U+FFFD from a partial UTF-8 sequence) is held back until it completes."""

    def __init__(self, tokenizer):
        self.tok, self.ids, self.printed = tokenizer, [], 0

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.tok.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        new, self.printed = text[self.printed:], len(text)
        return new

    def flush(self) -> str:
        text = self.tok.decode(self.ids)
        new, self.printed = text[self.printed:], len(text)
        return new
