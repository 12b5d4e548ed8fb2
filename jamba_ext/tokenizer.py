"""Tokenizers for the command line: a byte-level one for the built-in model, a HF tokenizer.json loader.

    ByteTokenizer        ids 0/1/2 = pad/bos/eos, byte b -> b + 3 (vocab 259); decodes UTF-8 with replacement
    load_tokenizer(dir)  tokenizer.json of a checkpoint through the `tokenizers` package, a ByteTokenizer where the
                         directory holds ByteTokenizer.MARKER (a byte-level model saved by `jamba-ext train`), or None
    decode_after         a completion's text as it reads after its prompt (a "▁" decoder strips a leading space)
    StreamDecoder        turns a growing id list into printable text increments (no half UTF-8 characters); the
                         increments add up to decode_after's text
    token_bytes          a token's raw bytes (a byte token's one byte: OpenAI's logprobs "bytes")
    load_chat_template   a checkpoint's chat template (chat_template.jinja or tokenizer_config.json), a ChatTemplate
"""
import functools
import json
import os
import re
from typing import Dict, List, Optional, Sequence


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

    def token_bytes(self, token_id: int) -> bytes:
        """The token's byte (b"" for pad / bos / eos)"""
        return bytes([token_id - self.offset]) if self.offset <= token_id < self.vocab_size else b""


@functools.lru_cache(maxsize=1)
def _byte_level_chars() -> Dict[str, int]:
    """GPT-2's byte-level alphabet (a ByteLevel decoder's): the character standing for each byte -> the byte.
    Printable Latin-1 bytes stand for themselves, the others for the characters from U+0100 on, in byte order."""
    own = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    out, n = {}, 0
    for b in range(256):
        if b in own:
            out[chr(b)] = b
        else:
            out[chr(0x100 + n)] = b
            n += 1
    return out


class HFTokenizer:
    """A `tokenizers.Tokenizer` from tokenizer.json behind the encode/decode interface above."""

    def __init__(self, path: str):
        from tokenizers import Tokenizer
        self.tok = Tokenizer.from_file(path)

    def encode(self, text: str, add_bos: bool = True) -> List[int]:
        return self.tok.encode(text, add_special_tokens=add_bos).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def _decoders(self) -> set:
        """The types of the tokenizer's decoder and of those in it ("ByteFallback", "ByteLevel", "Metaspace", ...;
        a Replace of "▁" counts as "Metaspace"), read once from its JSON form."""
        if getattr(self, "_kinds", None) is None:
            kinds, todo = set(), [json.loads(self.tok.to_str()).get("decoder")]
            while todo:
                d = todo.pop()
                if isinstance(d, dict):
                    kinds.add(d.get("type"))
                    todo += d.get("decoders") or []
                    if d.get("type") == "Replace" and (d.get("pattern") or {}).get("String") == "\u2581":
                        kinds.add("Metaspace")
            self._kinds = kinds
        return self._kinds

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes the token stands for: a byte-fallback token's ("<0xE2>") byte, a byte-level token's bytes
        (GPT-2's alphabet), a "▁" token's text with its space; the decoded text's bytes of any other; b"" for a
        special token (decode skips it)."""
        piece = self.tok.id_to_token(int(token_id))
        if piece is None or (not self.decode([token_id]) and self.tok.decode([int(token_id)],
                                                                          skip_special_tokens=False)):
            return b""
        kinds = self._decoders()
        m = re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", piece)
        if m and "ByteFallback" in kinds:
            return bytes([int(m.group(1), 16)])
        if "ByteLevel" in kinds:
            chars = _byte_level_chars()
            if all(c in chars for c in piece):
                return bytes(chars[c] for c in piece)
        if "Metaspace" in kinds:
            return piece.replace("\u2581", " ").encode("utf-8")
        return self.decode([token_id]).encode("utf-8")


def token_bytes(tok, token_id: int) -> bytes:
    """A token's raw bytes (OpenAI's logprobs "bytes": a byte token of a character's UTF-8 is that byte, not
    U+FFFD's three): the tokenizer's token_bytes, else its decoded text's bytes."""
    own = getattr(tok, "token_bytes", None)
    return own(token_id) if own is not None else tok.decode([token_id]).encode("utf-8")


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


CONTEXT_TOKENS = 4   # the prompt's last ids decode_after decodes a completion behind


def _text_after(tok, context: Sequence[int], ids: Sequence[int]) -> str:
    """ids' text decoded in one piece behind context (its last CONTEXT_TOKENS ids): decode(context + ids) less
    decode(context). A tokenizer.json whose decoder strips the first space of a text (Llama-style "▁" tokens, as
    Jamba's) dropped a completion's leading space when it was decoded alone. decode(ids) where the context's text is
    not a prefix of the whole (an unfinished UTF-8 character at its end, or byte tokens whose run the ids continue)
    or there is none."""
    ctx = list(context)[-CONTEXT_TOKENS:]
    if not ctx:
        return tok.decode(ids)
    head, full = tok.decode(ctx), tok.decode(ctx + list(ids))
    if head.endswith("\ufffd") or not full.startswith(head):
        return tok.decode(ids)
    return full[len(head):]


def decode_after(tok, context: Sequence[int], ids: Sequence[int]) -> str:
    """A completion's text as it reads after context (a prompt): the text a StreamDecoder prints for ids, pieces and
    flush() together, so a streamed completion and its whole text agree whatever its bytes are (byte tokens that do
    not form valid UTF-8 too: a byte-fallback decoder reads a run of byte tokens again as it grows, which could
    change text printed already). For text of whole characters it is decode(context + ids) less decode(context)
    (a completion's leading space kept after a "▁" decoder); a ByteTokenizer reads decode(ids) either way."""
    dec = StreamDecoder(tok, context)
    for t in ids:
        dec.push(t)
    return dec.text()


class StreamDecoder:
    """Feed token ids one at a time; returns the new text since the last call. The ids not printed yet are decoded
    together, behind the last CONTEXT_TOKENS ids before them (the prompt's, then the completion's: _text_after), and
    printed once their text does not end in U+FFFD (an incomplete character, held back until it completes); text
    once printed is never taken back, and text() -- all the pieces and what flush() would print -- is the
    completion's text (decode_after). context: the prompt's ids."""

    def __init__(self, tokenizer, context: Sequence[int] = ()):
        self.tok, self.ids = tokenizer, []
        self.context = list(context)[-CONTEXT_TOKENS:]
        self.done, self.shown = 0, ""       # (ids printed, their text)

    def _pending(self, extra: Sequence[int] = ()) -> str:
        """The text of the ids not printed yet (and extra after them), behind the ids before them."""
        before = (self.context + self.ids[:self.done])[-CONTEXT_TOKENS:]
        return _text_after(self.tok, before, self.ids[self.done:] + list(extra))

    def text(self) -> str:
        """All the text so far (what printed pieces and flush() add up to)"""
        return self.shown + self._pending()

    def peek(self, token_id: int, last: bool = False) -> str:
        """What push(token_id) would return now (last: push and flush), leaving the decoder as it is."""
        text = self._pending([token_id])
        return "" if text.endswith("\ufffd") and not last else text

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self._pending()
        if text.endswith("\ufffd"):
            return ""
        self.done, self.shown = len(self.ids), self.shown + text
        return text

    def flush(self) -> str:
        text = self._pending()
        self.done, self.shown = len(self.ids), self.shown + text
        return text


def read_json_object(path: str) -> dict:
    """A checkpoint's JSON file that holds one object (config.json, generation_config.json, tokenizer_config.json);
    ValueError naming the file when it is not valid JSON or not an object (OSError as open() raises it)."""
    with open(path, encoding="utf-8") as f:
        try:
            d = json.load(f)
        except ValueError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(d).__name__}")
    return d


def _generation_tags():
    """A jinja2 extension taking {% generation %} ... {% endgeneration %}: the body rendered in a scope of its own
    (a {% set %} inside stays inside, as in transformers' rendering, where the body is a call block's)."""
    from jinja2 import nodes
    from jinja2.ext import Extension

    class GenerationTags(Extension):
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body).set_lineno(lineno)
    return GenerationTags


class ChatTemplate:
    """A checkpoint's Jinja chat template, rendered as transformers' apply_chat_template(tokenize=False) renders it:
    a sandboxed environment with trim_blocks and lstrip_blocks, the loop controls, a tojson filter without HTML
    escaping, raise_exception(msg) (a ValueError here) and strftime_now(fmt); the variables messages, tools,
    documents, add_generation_prompt and the special tokens of tokenizer_config.json (bos_token, eos_token, ...). The text it
    renders carries its own special tokens: encode it with add_bos=False. transformers' {% generation %} ...
    {% endgeneration %} tags (which mark the assistant's tokens for its return_assistant_tokens_mask) render their body
    as it is."""

    def __init__(self, source: str, special: Optional[Dict[str, str]] = None):
        import datetime

        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise jinja2.exceptions.TemplateError(message)

        def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
            return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=["jinja2.ext.loopcontrols", _generation_tags()])
        env.filters["tojson"] = tojson
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
        self._error = jinja2.exceptions.TemplateError
        try:
            self.template = env.from_string(source)
        except self._error as e:
            raise ValueError(f"chat template: {e}") from None
        self.special = dict(special or {})

    def render(self, messages: Sequence[Dict[str, str]], add_generation_prompt: bool = True, tools=None,
               documents=None, **kwargs) -> str:
        """messages: [{"role": "system" | "user" | "assistant", "content": text}, ...] -> the prompt text. tools and
        documents (None unless given, as transformers passes them: a template may test `tools is not none`) and any
        other keyword go to the template as variables."""
        try:
            return self.template.render(messages=list(messages), tools=tools, documents=documents,
                                        add_generation_prompt=add_generation_prompt, **{**self.special, **kwargs})
        except self._error as e:
            raise ValueError(f"chat template: {e}") from None


def _token_text(v) -> Optional[str]:
    """A special token as tokenizer_config.json writes it: a string, or an AddedToken dict with its "content"."""
    if isinstance(v, dict):
        v = v.get("content")
    return v if isinstance(v, str) else None


def load_chat_template(model_dir: str) -> Optional[ChatTemplate]:
    """The chat template of a checkpoint directory: chat_template.jinja, else tokenizer_config.json's chat_template
    (a string, or a list of {"name", "template"}: the one named "default"), with the special tokens of
    tokenizer_config.json; None when the checkpoint has none. ValueError on a malformed file or template, OSError on
    an unreadable one."""
    cfg_path = os.path.join(model_dir, "tokenizer_config.json")
    cfg = read_json_object(cfg_path) if os.path.isfile(cfg_path) else {}
    jinja = os.path.join(model_dir, "chat_template.jinja")
    if os.path.isfile(jinja):
        with open(jinja, encoding="utf-8") as f:
            source = f.read()
    else:
        source = cfg.get("chat_template")
        if isinstance(source, list):
            source = next((t.get("template") for t in source if isinstance(t, dict) and t.get("name") == "default"),
                          None)
        if source is None:
            return None
        if not isinstance(source, str):
            raise ValueError(f"{cfg_path}: chat_template is neither a string nor a list of named templates")
    special = {k: _token_text(cfg.get(k)) for k in ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token",
                                                   "cls_token", "mask_token")}
    return ChatTemplate(source, {k: v for k, v in special.items() if v is not None})
