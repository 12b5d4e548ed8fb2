"""The jamba-ext command.

    python -m jamba_ext generate --prompt "Hello"                 # built-in small model, byte tokenizer
    python -m jamba_ext generate --model DIR --prompt "Hello"     # a transformers Jamba checkpoint (dir or Hub id)
    python -m jamba_ext generate --model DIR --prompt "Hello" --experts-fp8   # MoE experts in fp8 (half the memory)
    python -m jamba_ext generate --model DIR --chat --prompt "Hi!" --system "Be brief."   # an instruct model's chat
    python -m jamba_ext generate --model DIR --interactive        # a conversation, a message per line of input
    python -m jamba_ext generate --model DIR --prompts-file p.jsonl --batch-size 16 --output out.jsonl   # offline batch
    python -m jamba_ext generate --model DIR --prompts-file p.jsonl --continuous  # continuous batching (rows refilled)
    python -m jamba_ext serve --model DIR --port 8000            # OpenAI-style HTTP completions (jamba_ext.server)
    python -m jamba_ext check                                     # self-check of every op on this machine
    python -m jamba_ext train --text-file notes.txt --steps 200 --save ./tiny   # fine-tune on a text file
    python -m jamba_ext generate --model ./tiny --prompt "Hello"  # ... and generate with the result
    python -m jamba_ext train --text-file notes.txt --lora 8 --save-lora ./adapter   # LoRA adapters alone (PEFT dir)
    python -m jamba_ext generate --adapter ./adapter --prompt "Hello"   # ... loaded onto the model, merged
    jamba-ext generate --prompt "Hello" --max-new-tokens 200 --temperature 0.8 --top-p 0.9

The built-in model is a small random-weight Jamba (fixed seed, see DEFAULT_CONFIG): it exercises every
kernel (Mamba, attention, MoE) with no download; its text is noise. With --model, DIR holds config.json
+ safetensors (sharded index honoured) and, for text, tokenizer.json (read with the `tokenizers`
package). Generated text streams to stdout; throughput (prefill and decode tokens/s) and, for long
prompts and long generations, progress bars go to stderr. Exit status 2 on a bad argument or checkpoint.
--prompts-file runs many prompts (a line each, or JSON Lines) in batches (--batch-size; longest prompts first, so that
prompts of similar length share a batch and little padding is computed) and writes one JSON object per prompt, in the
file's order, to stdout or --output. With --continuous (continuous batching), --batch-size rows decode together and a
row whose completion ends takes the next prompt at once, and the prompts' common first tokens (a --system message)
run once (jamba_ext.continuous); a .jsonl object's "max_new_tokens" sets that prompt's budget.
--experts-fp8 stores the MoE expert weights in float8_e4m3fn with a per-row scale (weight-only quantisation, done while
the checkpoint loads: from_pretrained(experts_dtype="fp8"); the built-in model is quantized after it is built);
--act-fp8 adds fp8 activations (W8A8: x and the SiLU product quantized per row; used on Hopper GPUs from 7 tokens).
`train` fine-tunes every weight (or, with --lora R, rank-R adapters) of the built-in model (or of --model) on random
windows of a UTF-8 text file
(next-token loss, AdamW, gradients clipped at norm 1; on a GPU fp32 weights under bf16 autocast), logs the loss,
tokens/s and an ETA to stderr, and with --save writes a checkpoint that `generate --model` reads (with --lora,
--save-lora DIR writes the adapters alone, a PEFT adapter directory that `generate --adapter DIR` and `serve --adapter
DIR` load and merge). Its text, --save and --save-lora are checked before the weights load; Ctrl-C stops after the
step in progress (with --save / --save-lora: saving the steps done), exit status 130.
"""
import argparse
import itertools
import json
import math
import os
import sys
import time
from typing import NoReturn

DEFAULT_CONFIG = dict(
    vocab_size=259, hidden_size=128, intermediate_size=256, num_hidden_layers=8, num_attention_heads=4,
    num_key_value_heads=2, attn_layer_period=8, attn_layer_offset=4, expert_layer_period=2,
    expert_layer_offset=1, num_experts=8, num_experts_per_tok=2, mamba_d_state=16, mamba_d_conv=4,
    mamba_expand=2, pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
)
DEFAULT_SEED = 0
PROGRESS_MIN_TOKENS = 64          # show a progress bar from this many new tokens on


class _Bar:
    """A one-line progress bar on stderr; when stderr is not a terminal (a log file, a pipe), a plain line at every
    tenth of the work instead of carriage-return redraws."""

    def __init__(self, total: int, enabled: bool, label: str = "", unit: str = "tok/s"):
        self.total, self.enabled, self.n, self.t0, self.label = total, enabled, 0, time.perf_counter(), label
        self.unit = unit
        self.tty, self.tenths = sys.stderr.isatty(), 0

    def update(self, n: int = 1) -> None:
        self.n += n
        if not self.enabled:
            return
        frac = self.n / max(self.total, 1)
        rate = self.n / max(time.perf_counter() - self.t0, 1e-9)
        if not self.tty:
            if int(10 * frac) > self.tenths:
                self.tenths = int(10 * frac)
                sys.stderr.write(f"{self.label}{self.n}/{self.total} ({100 * frac:.0f}%) {rate:.1f} {self.unit}\n")
                sys.stderr.flush()
            return
        fill = int(30 * frac)
        sys.stderr.write(f"\r{self.label}[{'#' * fill}{'.' * (30 - fill)}] {self.n}/{self.total} {rate:7.1f} "
                         f"{self.unit}")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\r" + " " * (72 + len(self.label)) + "\r")
            sys.stderr.flush()


def _fail(msg: str, code: int = 2) -> NoReturn:
    sys.stderr.write(f"jamba-ext: error: {msg}\n")
    sys.exit(code)


def _read_text(path: str, flag: str) -> str:
    """A UTF-8 text file's contents; exit 2 naming the flag when it cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        _fail(f"{flag} {path!r}: {e}")


def _max_memory(spec, dmap):
    """--max-memory "0=40GiB,1=80GiB" -> {0: "40GiB", 1: "80GiB"} (keys: a GPU index, or a device name such as
    cuda:1 or cpu; sizes as jamba_ext.placement.parse_size reads them); None when not given."""
    if spec is None:
        return None
    if dmap not in ("auto", "balanced"):
        _fail("--max-memory goes with --device-map auto or balanced")
    from .placement import parse_size
    out = {}
    for part in spec.split(","):
        key, eq, size = part.partition("=")
        key, size = key.strip(), size.strip()
        if not eq or not key or not size:
            _fail(f"--max-memory: expected DEVICE=SIZE pairs separated by commas (e.g. 0=40GiB,1=80GiB), got {spec!r}")
        try:
            parse_size(size)
        except ValueError:
            _fail(f"--max-memory: {size!r} is not a size (e.g. 40GiB, 80GB, 512MiB)")
        out[int(key) if key.isdigit() else key] = size
    return out


def _device(spec: str, flag: str = "--device"):
    """--device's value as a torch.device: cpu, or cuda[:N] with a GPU N visible to torch; exit 2 otherwise."""
    import torch
    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        _fail(f"{flag}: expected cpu or cuda[:N], got {spec!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            _fail(f"{flag} {spec}: no CUDA GPU is visible to torch")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            _fail(f"{flag} {spec}: torch sees {n} GPU{'s' if n > 1 else ''} "
                  f"(cuda:0{f' .. cuda:{n - 1}' if n > 1 else ''})")
    return dev


def _load(args, before_weights=None):
    """(model, tokenizer, what): the built-in model or --model's checkpoint, with --adapter's LoRA adapters (generate,
    serve) merged into its weights. before_weights(tokenizer, config), when given, runs once both are known and
    before the weights are built or read (train checks its text there: a checkpoint of 100 GB takes minutes to
    load)."""
    adapter = getattr(args, "adapter", None)
    if adapter is not None:
        adapter = args.adapter = _check_adapter(adapter)      # (before the weights: minutes for a large checkpoint)
    model, tok, what = _load_base(args, before_weights)
    if adapter is not None:
        _attach_adapter(model, adapter)
    return model, tok, what


def _check_adapter(path: str) -> str:
    """--adapter's directory, "~" expanded, once it holds a LoRA adapter config that load_lora takes and a weights
    file (exit 2 naming the flag and the path otherwise)."""
    if not path.strip():
        _fail("--adapter: empty path (give a LoRA adapter directory, as train --save-lora writes)")
    path = os.path.expanduser(path)
    from .lora import read_adapter_config
    try:
        read_adapter_config(path)
    except (ValueError, OSError) as e:
        _fail(f"--adapter {path!r}: {_adapter_error(e, path)}")
    return path


def _adapter_error(e: BaseException, path: str) -> str:
    """load_lora's message without its "load_lora: " and path prefixes (the CLI's line names the flag and path)."""
    msg = str(e)
    msg = msg[len("load_lora: "):] if msg.startswith("load_lora: ") else msg
    return msg[len(path) + 2:] if msg.startswith(path + ": ") else msg


def _attach_adapter(model, path: str) -> None:
    """--adapter: load_lora, then merge_lora. Merged, the projections are plain nn.Linears again, so the fast paths
    that only take those apply (the Mamba layers' own projection layouts and fused decode step, the joint q/k/v and
    gate/up products; with adapters attached every adapted projection runs as its module, the adapter's product
    besides); the CUDA-graph decode would replay either. The cost: the update is rounded once into the weights'
    dtype (bf16 on a GPU), as train --save's merged checkpoint is."""
    from .lora import LoRALinear, load_lora, merge_lora
    try:
        n = load_lora(model, path)
    except (ValueError, OSError, ImportError) as e:
        _fail(f"--adapter {path!r}: {_adapter_error(e, path)}")
    mod = next(m for m in model.modules() if isinstance(m, LoRALinear))
    merge_lora(model)
    sys.stderr.write(f"adapter: {path} (LoRA rank {mod.r}, alpha {mod.alpha:g}, on {n} projections; merged into "
                     f"the weights)\n")


def _load_base(args, before_weights=None):
    """_load without the adapter: the model, its tokenizer and what it is."""
    import torch
    from .modeling_jamba import JambaConfig, JambaForCausalLM
    from .tokenizer import ByteTokenizer, load_tokenizer

    dmap = getattr(args, "device_map", None)
    if dmap is not None:
        if args.device is not None:
            _fail("give --device or --device-map, not both")
        if not torch.cuda.is_available():
            _fail("--device-map: no CUDA GPU is visible to torch")
        dmap = dmap.split(",") if "," in dmap else dmap           # a list of devices, or auto / balanced / one
    mm = _max_memory(getattr(args, "max_memory", None), dmap)
    device = _device(args.device) if args.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    fp8 = getattr(args, "experts_fp8", False)
    act8 = getattr(args, "act_fp8", False)
    if act8 and not fp8:
        _fail("--act-fp8 quantizes the MoE activations of fp8 experts: add --experts-fp8")
    if args.model is None:
        cfg = JambaConfig(**DEFAULT_CONFIG)
        if before_weights is not None:
            before_weights(ByteTokenizer(), cfg)
        model = JambaForCausalLM.from_config(cfg, dtype=dtype, device=device, seed=args.seed)
        if dmap is not None:
            try:
                model.dispatch(dmap, max_memory=mm)
            except ValueError as e:
                _fail(f"--device-map: {e}")
        if fp8:
            model.quantize_experts("fp8", act_fp8=act8)
        return model, ByteTokenizer(), "built-in random Jamba (byte-level tokenizer)"
    from .modeling_jamba import resolve_checkpoint
    try:
        d = resolve_checkpoint(args.model)              # a local directory, or a Hub id downloaded
    except (FileNotFoundError, OSError) as e:
        _fail(f"--model {args.model!r}: {e}")
    if not os.path.isfile(os.path.join(d, "config.json")):
        _fail(f"--model {d!r}: no config.json (expected a transformers Jamba checkpoint directory)")
    try:                                  # (the config first: another model type is the news, not its tokenizer)
        cfg = JambaConfig.from_json_file(os.path.join(d, "config.json"))
    except (ValueError, OSError) as e:
        _fail(f"--model {d!r}: {e}")
    try:
        tok = load_tokenizer(d)
    except ImportError as e:
        _fail(str(e))
    if tok is None:
        _fail(f"--model {d!r}: no tokenizer.json, so no text can be encoded")
    if before_weights is not None:
        before_weights(tok, cfg)
    try:
        place = dict(device=device) if dmap is None else dict(device_map=dmap, max_memory=mm)
        model = JambaForCausalLM.from_pretrained(d, dtype=dtype, progress=args.progress,
                                                 experts_dtype="fp8" if fp8 else None, **place)
    except (ValueError, FileNotFoundError, OSError) as e:
        _fail(f"--model {d!r}: {e}")
    if act8:
        model.quantize_experts("fp8", act_fp8=True)  # experts fp8 already: sets the permission only
    # the checkpoint as the user named it (a Hub id, not the cache directory d; a local one absolute): what
    # train --save-lora writes as the adapters' base_model_name_or_path
    name = os.path.expanduser(args.model)
    model.config._name_or_path = model.name_or_path = os.path.abspath(name) if os.path.isdir(name) else name
    return model, tok, d


def _chat_template(model_dir: str):
    """--chat: the checkpoint's chat template (exit 2 when it has none or it does not parse)."""
    from .tokenizer import load_chat_template
    try:
        tmpl = load_chat_template(model_dir)
    except (ValueError, ImportError, OSError) as e:
        _fail(f"--chat: {e}")
    if tmpl is None:
        _fail(f"--chat: {model_dir!r} has no chat template (chat_template.jinja, or chat_template in "
              "tokenizer_config.json)")
    return tmpl


def _render(tmpl, msgs) -> str:
    """The conversation as the chat template formats it, ready for the assistant's reply."""
    try:
        return tmpl.render(msgs, add_generation_prompt=True)
    except ValueError as e:
        _fail(f"--chat: {e}")


def cmd_generate(args) -> int:
    import torch

    if args.max_new_tokens < 0:
        _fail("--max-new-tokens must be >= 0")
    if args.min_new_tokens < 0:
        _fail("--min-new-tokens must be >= 0")
    if not 0 < args.repetition_penalty < float("inf"):
        _fail("--repetition-penalty must be a finite number > 0 (1.0: none)")
    if not args.temperature >= 0:                   # (NaN too: it decoded greedily in silence)
        _fail("--temperature must be >= 0 (0: greedy)")
    if args.top_k < 0:
        _fail("--top-k must be >= 0 (0: off)")
    if not 0 < args.top_p <= 1:
        _fail("--top-p must be in (0, 1] (1: off)")
    if args.min_p is not None and not 0 <= args.min_p <= 1:
        _fail("--min-p must be in [0, 1]")
    if args.num_beams < 1:
        _fail("--num-beams must be >= 1")
    if args.no_repeat_ngram_size < 0:
        _fail("--no-repeat-ngram-size must be >= 0 (0: off)")
    if args.top_h is not None and not 0 < args.top_h <= 1:
        _fail("--top-h must be in (0, 1]")
    if not args.temperature > 0:                    # (greedy, beam search too: the filters would be ignored)
        for flag, on in (("--top-k", args.top_k != 0), ("--top-p", args.top_p != 1),
                         ("--min-p", args.min_p not in (None, 0)), ("--top-h", args.top_h is not None)):
            if on:
                _fail(f"{flag} applies when sampling: add --temperature T > 0 (the default, 0, decodes greedily)")
    from .modeling_jamba import prefill_chunks
    try:
        prefill_chunks(1, 1, args.prefill_chunk)
    except ValueError:
        _fail("--prefill-chunk must be 0 (one forward) or >= 8")
    if args.prompts_file is None:
        for flag, v in (("--batch-size", args.batch_size), ("--output", args.output),
                        ("--continuous", args.continuous or None)):
            if v is not None:
                _fail(f"{flag} goes with --prompts-file")
    elif args.batch_size is not None and args.batch_size < 1:
        _fail("--batch-size must be >= 1")
    if args.continuous:
        for flag, on in (("--num-beams", args.num_beams != 1), ("--top-h", args.top_h is not None),
                         ("--no-repeat-ngram-size", args.no_repeat_ngram_size != 0),
                         ("--max-new-tokens 0", args.max_new_tokens == 0)):
            if on:
                _fail(f"--continuous takes greedy or sampled decoding (--temperature, --top-k, --top-p, --min-p), "
                      f"--repetition-penalty, --min-new-tokens, --stop and a budget a prompt; not {flag} (run "
                      "without --continuous for it)")
    args.chat = args.chat or args.interactive
    if args.system is not None and not args.chat:
        _fail("--system goes with --chat")
    if args.chat and args.model is None:
        _fail(f"{'--interactive' if args.interactive else '--chat'} formats the prompt with a checkpoint's chat "
              "template: give --model (the built-in model has none)")
    items = _read_prompts(args.prompts_file) if args.prompts_file is not None else None
    if items is not None and args.max_new_tokens == 0 and len({b is None for _, _, b in items}) == 2:
        _fail(f"--max-new-tokens 0 (the budget of the prompts without their own \"max_new_tokens\") cannot go with "
              f"the per-prompt budgets of {args.prompts_file!r}: give --max-new-tokens >= 1")
    prompt = None if args.interactive or items is not None else \
        args.prompt if args.prompt_file is None else _read_text(args.prompt_file, "--prompt-file")
    if prompt == "" and args.prompt_file is not None:
        _fail(f"--prompt-file {args.prompt_file!r} is empty (--prompt \"\": generate from the BOS token alone)")
    torch.manual_seed(args.seed)
    model, tok, what = _load(args)
    tmpl = _chat_template(what) if args.chat else None
    args.stop_kw = _stop_kwargs(args.stop, tok)
    where = model.device if not getattr(model, "hf_device_map", None) else \
        "GPUs " + ",".join(str(d) for d in sorted(set(model.hf_device_map.values()), key=str))
    sys.stderr.write(f"model: {what} | {model.num_parameters() / 1e6:.1f}M params | {where} {model.dtype}"
                     f"{' (experts float8_e4m3fn)' if model.experts_fp8 else ''}\n")
    if args.interactive:
        return _chat_loop(args, model, tok, tmpl)
    if items is not None:
        return _batch_generate(args, model, tok, tmpl, items)
    msgs = ([{"role": "system", "content": args.system}] if args.system is not None else []) + \
        [{"role": "user", "content": prompt}]
    ids = _encode(tok, _render(tmpl, msgs) if args.chat else prompt, model, add_bos=not args.chat,
                  what="--prompt-file" if args.prompt_file is not None else "--prompt")
    _generate_once(args, model, tok, ids, prompt)
    return 0


def _read_prompts(path: str) -> list:
    """--prompts-file: [(line number, prompt text, its max_new_tokens or None)]. A .jsonl file holds a JSON string, or
    an object with a string "prompt" (and optionally an int "max_new_tokens", that prompt's budget), per line; any
    other file a prompt per line. Blank lines are skipped; exit 2 naming the line when one does not parse, or when the
    file holds no prompt."""
    text = _read_text(path, "--prompts-file")
    jsonl = path.lower().endswith(".jsonl")
    items = []
    for n, line in enumerate(text.split("\n"), 1):    # (not splitlines: U+2028, \x0c, ... are text inside a prompt)
        line = line[:-1] if line.endswith("\r") else line
        if not line.strip():
            continue
        budget = None
        if jsonl:
            try:
                v = json.loads(line)
            except json.JSONDecodeError as e:
                _fail(f"--prompts-file {path!r} line {n}: not JSON ({e.msg})")
            if isinstance(v, dict):
                budget = v.get("max_new_tokens")
                if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
                    _fail(f"--prompts-file {path!r} line {n}: \"max_new_tokens\" must be an int >= 1, got {budget!r}")
                v = v.get("prompt")
            if not isinstance(v, str):
                _fail(f"--prompts-file {path!r} line {n}: expected a JSON string or an object with a string "
                      "\"prompt\"")
            line = v
        items.append((n, line, budget))
    if not items:
        _fail(f"--prompts-file {path!r} holds no prompts")
    return items


def _batch_generate(args, model, tok, tmpl, items) -> int:
    """--prompts-file: every prompt through generate() in batches of --batch-size (default 16), longest first
    (jamba_ext.batch.generate_many). Writes a JSON object per prompt, {"index", "prompt", "completion",
    "prompt_tokens", "completion_tokens", "finish_reason"}, in the file's order to stdout or --output (each line as
    soon as those before it are done); a progress bar counts the prompts on stderr, and a summary line gives the
    throughput."""
    from .tokenizer import decode_after
    from .batch import generate_many
    system = [{"role": "system", "content": args.system}] if args.system is not None else []
    enc = [_encode(tok, _render(tmpl, system + [{"role": "user", "content": p}]) if args.chat else p, model,
                   add_bos=not args.chat, what=f"--prompts-file line {n}") for n, p, _ in items]
    bs = args.batch_size or 16
    n_batches = -(-len(enc) // bs)
    budgets = [args.max_new_tokens if b is None else b for _, _, b in items]
    if len(set(budgets)) == 1:
        budgets = budgets[0]
    try:
        out_f = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    except OSError as e:
        _fail(f"--output {args.output!r}: {e}")
    bar = _Bar(len(enc), args.progress if args.progress is not None else n_batches > 1, "prompts ", unit="prompts/s")
    use_graph = args.cuda_graph if args.cuda_graph is not None else model.device.type == "cuda"
    n_new = 0
    t0 = time.perf_counter()
    try:
        for i, new, reason in generate_many(
                model, enc, batch_size=bs, seed=args.seed, decode=tok.decode, on_batch=bar.update,
                max_new_tokens=budgets, do_sample=args.temperature > 0, temperature=args.temperature or 1.0,
                top_k=args.top_k, top_p=args.top_p, min_p=args.min_p, cuda_graph=use_graph,
                repetition_penalty=args.repetition_penalty, min_new_tokens=args.min_new_tokens,
                prefill_chunk=args.prefill_chunk, continuous=args.continuous, **args.stop_kw,
                **({} if args.continuous else dict(num_beams=args.num_beams, top_h=args.top_h,
                                                   no_repeat_ngram_size=args.no_repeat_ngram_size))):
            n_new += len(new)
            out_f.write(json.dumps(dict(index=i, prompt=items[i][1], completion=decode_after(tok, enc[i], new),
                                        prompt_tokens=len(enc[i]), completion_tokens=len(new),
                                        finish_reason=reason), ensure_ascii=False) + "\n")
            out_f.flush()
    finally:
        bar.close()
        if out_f is not sys.stdout:
            out_f.close()
    dt = max(time.perf_counter() - t0, 1e-9)
    n_prompt = sum(map(len, enc))
    how = f"on {bs} rows (continuous batching)" if args.continuous else \
        f"in {n_batches} batch{'es' if n_batches > 1 else ''} of up to {bs}"
    sys.stderr.write(f"{len(enc)} prompts {how}: "
                     f"{n_prompt} prompt tokens and {n_new} new tokens in {dt:.2f} s ({n_new / dt:.1f} new tokens/s, "
                     f"{(n_prompt + n_new) / dt:.1f} tokens/s in all)\n")
    return 0


def _stop_kwargs(stop, tok) -> dict:
    """--stop: generate's stop_strings with the checkpoint's tokenizer as a transformers tokenizer (its
    StopStringCriteria matches them against the token strings); {} without --stop."""
    if not stop:
        return {}
    if any(not s for s in stop):
        _fail("--stop: an empty string")
    from .tokenizer import HFTokenizer
    if not isinstance(tok, HFTokenizer):
        _fail("--stop needs a checkpoint whose tokenizer is a tokenizer.json (transformers' fast tokenizer); "
              "this model's is the built-in byte tokenizer")
    try:
        from transformers import PreTrainedTokenizerFast
    except ImportError:
        _fail("--stop needs transformers (pip install transformers)")
    hf = PreTrainedTokenizerFast(tokenizer_object=tok.tok)
    try:                                  # (what generate() builds: a tokenizer it cannot read fails here, named)
        from transformers import StopStringCriteria
        StopStringCriteria(tokenizer=hf, stop_strings=list(stop))
    except ValueError as e:
        _fail(f"--stop: transformers' stop-string check cannot read this checkpoint's tokenizer ({e})")
    return dict(stop_strings=list(stop), tokenizer=hf)


def _encode(tok, text: str, model, add_bos: bool, what: str) -> list:
    """The prompt's token ids; exit 2 when it encodes to none or to ids the model does not have, or is not valid
    Unicode (a --prompt argument's undecodable bytes arrive as lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        _fail(f"{what} is not valid UTF-8 text ({e.reason} at character {e.start})")
    ids = tok.encode(text, add_bos=add_bos)
    if not ids:
        _fail(f"{what} encodes to no tokens")
    if max(ids) >= model.config.vocab_size:
        _fail(f"the tokenizer produced id {max(ids)} >= the model's vocab_size {model.config.vocab_size}")
    return ids


def _chat_loop(args, model, tok, tmpl) -> int:
    """--interactive: a conversation on stdin / stdout. Each line read is the user's next message; the whole
    conversation so far (--system first) goes through the chat template, the reply streams out and joins the
    conversation. Ends at the end of input or a line /exit (Ctrl-C: exit status 130); /reset starts the conversation
    again."""
    try:
        return _chat_turns(args, model, tok, tmpl)
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return 130


def _chat_turns(args, model, tok, tmpl) -> int:
    system = [{"role": "system", "content": args.system}] if args.system is not None else []
    msgs = list(system)
    tty = sys.stdin.isatty()
    while True:
        if tty:
            sys.stderr.write("you> ")
            sys.stderr.flush()
        line = sys.stdin.readline()
        if not line or line.strip() == "/exit":
            return 0
        line = line.rstrip("\n")
        if line.strip() == "/reset":
            msgs = list(system)
            sys.stderr.write("(conversation reset)\n")
            continue
        if not line.strip():
            continue
        msgs.append({"role": "user", "content": line})
        ids = _encode(tok, _render(tmpl, msgs), model, add_bos=False, what="the conversation")
        new = _generate_once(args, model, tok, ids, None)
        msgs.append({"role": "assistant", "content": tok.decode(new)})


def _generate_once(args, model, tok, ids, prompt) -> list:
    """One generate() call on ids: the prompt echoed first (when given: not with --chat or a prompt file), the new
    text streamed to stdout, progress bars and the speed line on stderr. Returns the new token ids up to the first
    EOS."""
    import torch
    from .modeling_jamba import prefill_chunks
    from .tokenizer import StreamDecoder, decode_after
    show_bar = args.progress if args.progress is not None else args.max_new_tokens >= PROGRESS_MIN_TOKENS
    # a prompt of more than one prefill chunk gets its own bar (a 256K-token prompt is ~17 s of prefill on an H200)
    n_chunks = len(prefill_chunks(len(ids), 1, args.prefill_chunk))
    show_pre = args.progress if args.progress is not None else n_chunks > 1
    pre_bar = _Bar(len(ids), show_pre and args.prefill_chunk != 0, "prefill ")

    echoed = []

    def echo():
        if prompt is not None and args.prompt_file is None and not args.chat and not echoed:  # (nor a prompt file:
            # it may be a book; with --chat only the reply is printed)
            sys.stdout.write(prompt)
            sys.stdout.flush()
        echoed.append(True)

    def on_prefill(done, total):
        pre_bar.update(done - pre_bar.n)
        if done == total:                           # the bar's line is cleared, then the prompt is echoed
            pre_bar.close()
            echo()

    # a bar and streamed text on one terminal would overwrite each other: then print the text at the end
    stream = not (show_bar and sys.stdout.isatty() and sys.stderr.isatty())
    bar = _Bar(args.max_new_tokens, show_bar)
    dec = StreamDecoder(tok, ids)
    times = {}
    n_new = [0]

    def on_token(t):
        tid = int(t[0])                              # a host copy (generate() already waited for it)
        if "first" not in times:
            times["first"] = time.perf_counter()
        n_new[0] += 1
        text = dec.push(tid)
        if stream and text:
            sys.stdout.write(text)
            sys.stdout.flush()
        bar.update()

    if not pre_bar.enabled:
        echo()
    # a CUDA model decodes through a captured CUDA graph unless --no-cuda-graph (falls back to eager, with a
    # warning, if the capture fails); on a CPU model --cuda-graph only warns
    # (layers over several GPUs: one graph per GPU)
    use_graph = args.cuda_graph if args.cuda_graph is not None else model.device.type == "cuda"
    t0 = pre_bar.t0 = time.perf_counter()
    if args.num_beams > 1:
        return _beam_generate(args, model, tok, ids, use_graph, on_prefill if pre_bar.enabled else None, echo, t0,
                              bar)
    eos = set(model._eos_ids())
    with torch.inference_mode():
        model.generate(torch.tensor([ids], device=model.device), max_new_tokens=args.max_new_tokens,
                       do_sample=args.temperature > 0, temperature=args.temperature or 1.0, top_k=args.top_k,
                       top_p=args.top_p, min_p=args.min_p, top_h=args.top_h, seed=args.seed, streamer=on_token,
                       cuda_graph=use_graph,
                       repetition_penalty=args.repetition_penalty, min_new_tokens=args.min_new_tokens,
                       no_repeat_ngram_size=args.no_repeat_ngram_size, prefill_chunk=args.prefill_chunk,
                       prefill_progress=on_prefill if pre_bar.enabled else None, **args.stop_kw)
    t1 = time.perf_counter()
    echo()                                          # (no prefill ran: --max-new-tokens 0)
    bar.close()
    rest = dec.flush()
    sys.stdout.write((rest if stream else dec.text()) + "\n")
    sys.stdout.flush()
    n = n_new[0]
    t_first = times.get("first", t1)
    prefill_s, decode_s = t_first - t0, t1 - t_first
    msg = f"prefill: {len(ids)} tokens in {prefill_s * 1e3:.1f} ms ({len(ids) / max(prefill_s, 1e-9):.1f} tokens/s)"
    if n > 1:
        info = getattr(model, "_decode_graph_info", None) or {}
        how = (" (CUDA graph, kept from the last call)" if info.get("reused") else " (CUDA graph)") if \
            info.get("captured") else (" (eager)" if model.device.type == "cuda" else "")
        msg += f" | decode{how}: {n - 1} tokens in {decode_s:.2f} s ({(n - 1) / max(decode_s, 1e-9):.1f} tokens/s)"
    msg += f" | total: {n} new tokens, {n / max(t1 - t0, 1e-9):.1f} tokens/s"
    sys.stderr.write(msg + "\n")
    return list(itertools.takewhile(lambda t: t not in eos, dec.ids))


def _beam_generate(args, model, tok, ids, use_graph, on_prefill, echo, t0, bar) -> list:
    """generate --num-beams N: the best hypothesis, printed when the search ends (a search has no token stream; the
    progress bar counts its steps, through a logits processor that leaves the scores alone: no host wait)."""
    import torch

    def count_step(input_ids, scores):
        if bar.n == 0:
            bar.t0 = time.perf_counter()
        bar.update()
        return scores

    with torch.inference_mode():
        out = model.generate(torch.tensor([ids], device=model.device), max_new_tokens=args.max_new_tokens,
                             num_beams=args.num_beams, cuda_graph=use_graph, repetition_penalty=args.repetition_penalty,
                             do_sample=args.temperature > 0, temperature=args.temperature or 1.0, top_k=args.top_k,
                             top_p=args.top_p, min_p=args.min_p, top_h=args.top_h, seed=args.seed,
                             min_new_tokens=args.min_new_tokens, prefill_chunk=args.prefill_chunk,
                             no_repeat_ngram_size=args.no_repeat_ngram_size, prefill_progress=on_prefill,
                             logits_processor=[count_step] if bar.enabled else None, **args.stop_kw)
    t1 = time.perf_counter()
    bar.close()
    echo()
    new, eos = out[0, len(ids):].tolist(), set(model._eos_ids())
    end = next((i for i, t in enumerate(new) if t in eos or t < 0), len(new))   # (what follows an EOS is fill)
    new = new[:end]
    from .tokenizer import decode_after
    sys.stdout.write(decode_after(tok, ids, new) + "\n")
    sys.stdout.flush()
    graph = (getattr(model, "_decode_graph_info", None) or {}).get("captured")
    sys.stderr.write(f"beam search: {args.num_beams} beams, {len(new)} new tokens in {t1 - t0:.2f} s (prefill "
                     f"included{', CUDA graph' if graph else ''})\n")
    return new


def _duration(s: float) -> str:
    """Seconds as a short duration for the log: 42 s, 3m05s, 2h07m."""
    s = max(0, int(round(s)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _make_out_dir(flag: str, path: str) -> None:
    """train's --save / --save-lora directory made (with its parents) and writable, else exit 2 naming flag and path."""
    if os.path.exists(path) and not os.path.isdir(path):
        _fail(f"{flag} {path!r}: a file is there, not a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        _fail(f"{flag} {path!r}: {e}")
    if not os.access(path, os.W_OK):
        _fail(f"{flag} {path!r}: not writable")


def cmd_train(args) -> int:
    """train: fine-tune on a text file. Ctrl-C (or SIGTERM) stops after the step in progress and, with --save (and
    --save-lora: the adapters), saves the weights trained so far; exit status 128 + the signal's number (130 for
    Ctrl-C) either way, so that a script sees the run did not finish. A second one stops at once: nothing saved."""
    try:
        return _train(args)
    except KeyboardInterrupt:   # (before the training loop, a second Ctrl-C within it, or off the main thread)
        sys.stderr.write("\njamba-ext: interrupted: nothing saved\n")
        return 130


def _train(args) -> int:
    import torch
    if args.steps < 1:
        _fail("--steps must be >= 1")
    if args.seq_len < 2:
        _fail("--seq-len must be >= 2 (a token and the next one to predict)")
    if args.batch < 1:
        _fail("--batch must be >= 1")
    if not 0 < args.lr < float("inf"):
        _fail("--lr must be a finite number > 0")
    if args.lora < 0:
        _fail("--lora must be >= 1 (the adapters' rank), or 0 for no adapters")
    if args.log_every < 0:
        _fail("--log-every must be >= 0 (0: 20 lines)")
    if not 0 <= args.lora_alpha < float("inf"):
        _fail("--lora-alpha must be a finite number > 0 (0: the default, 2R)")
    if args.lora_alpha and not args.lora:
        _fail("--lora-alpha goes with --lora R (it scales the adapters)")
    if args.experts_fp8 and not args.lora:
        _fail("--experts-fp8 freezes the MoE experts (fp8 weights take no gradient): train adapters with --lora R")
    if args.save is not None:
        if not args.save.strip():   # (--save "$DIR" with DIR unset trained, then saved nothing, exit 0)
            _fail("--save: empty path (give the directory to write the checkpoint to)")
        # "~" as a shell would (--save=~/ck is not expanded by the shell): save_pretrained expanded it and the byte
        # tokenizer's marker went to a directory named "~" under the working directory, so the checkpoint had none
        args.save = os.path.expanduser(args.save)
    if args.save_lora is not None:
        if not args.lora:
            _fail("--save-lora writes the LoRA adapters of --lora R: add --lora R (or give --save for the whole model)")
        if not args.save_lora.strip():
            _fail("--save-lora: empty path (give the directory to write the adapters to)")
        args.save_lora = os.path.expanduser(args.save_lora)          # ("~" as --save's: no shell expands --x=~/d)
        if args.save is not None and os.path.realpath(args.save_lora) == os.path.realpath(args.save):
            # transformers' from_pretrained (with peft installed) reads a directory holding adapter_config.json as an
            # adapter: it would load the adapter's base model and ignore the merged weights beside it
            _fail(f"--save-lora {args.save_lora!r} is --save's directory too: the adapter files would make "
                  "transformers read the merged checkpoint as an adapter; give two directories")
    if args.experts_fp8 and args.save:
        _fail("--save with --experts-fp8: a checkpoint holds unquantized expert weights, which the fp8 model no longer "
              "has; train without --experts-fp8 to save (--save-lora writes the adapters alone)")
    path = os.path.expanduser(args.text_file)
    text = _read_text(path, "--text-file")
    if not text:
        _fail(f"--text-file {args.text_file!r} is empty")
    if "\0" in text:                # (valid UTF-8, but no text: a binary file, or UTF-16 without its byte-order mark)
        _fail(f"--text-file {args.text_file!r} holds NUL characters (the first at character {text.index(chr(0))}): "
              "a binary file, or text in UTF-16 / UTF-32; give UTF-8 text")
    torch.manual_seed(args.seed)
    cuda = (_device(args.device) if args.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
            ).type == "cuda"
    if args.dtype is None:  # fp32 weights (and optimizer state), bf16 autocast on a GPU; frozen weights under
        args.dtype = "bfloat16" if cuda and args.lora else "float32"   # adapters: bf16 on a GPU
    got = []

    def check_text(tok, cfg):       # before the weights load (minutes for a large checkpoint), after the tokenizer
        from .tokenizer import ByteTokenizer
        ids = torch.tensor(tok.encode(text, add_bos=False), dtype=torch.long)
        if ids.numel() < args.seq_len + 1:
            _fail(f"--text-file {args.text_file!r} encodes to {ids.numel()} tokens; --seq-len {args.seq_len} needs at "
                  f"least {args.seq_len + 1}")
        if int(ids.max()) >= cfg.vocab_size:
            _fail(f"the tokenizer produced id {int(ids.max())} >= the model's vocab_size {cfg.vocab_size}")
        if args.save:       # an unusable --save path fails now, not after the training (made after the other checks)
            if isinstance(tok, ByteTokenizer) and os.path.isfile(os.path.join(args.save, "tokenizer.json")):
                # (generate --model reads a tokenizer.json before the byte-level marker: the text would be garbled)
                _fail(f"--save {args.save!r} holds a tokenizer.json (another model's checkpoint?), which would be read "
                      "instead of this byte-level model's tokenizer: give another directory, or remove it")
            _make_out_dir("--save", args.save)
        if args.save_lora:
            if os.path.isfile(os.path.join(args.save_lora, "config.json")):
                # (a model's checkpoint: transformers would load it with the adapter applied; generate --model without)
                _fail(f"--save-lora {args.save_lora!r} holds a config.json (a model checkpoint): give the adapters a "
                      "directory of their own")
            _make_out_dir("--save-lora", args.save_lora)
        got.append(ids)

    model, tok, what = _load(args, before_weights=check_text)
    ids = got[0]
    if args.lora:
        from .lora import DEFAULT_TARGETS
        # a rank above every adapted projection's min(in, out) adds nothing but memory (10^8 ended as an
        # out-of-memory error naming generate's flags)
        top = max((min(m.in_features, m.out_features) for n, m in model.named_modules()
                   if type(m) is torch.nn.Linear and n.rpartition(".")[2] in DEFAULT_TARGETS), default=0)
        if args.lora > top:
            _fail(f"--lora {args.lora}: larger than any adapted projection's rank (at most {top}, the smaller of its "
                  f"input and output sizes): give R <= {top} (typically 8 to 64)")
    amp = cuda and model.dtype == torch.float32 and not args.no_autocast
    sys.stderr.write(f"model: {what} | {model.num_parameters() / 1e6:.1f}M params"
                     f"{' (experts float8_e4m3fn)' if model.experts_fp8 else ''} | "
                     f"{model.device} {model.dtype}{' + bf16 autocast' if amp else ''} | text: {ids.numel()} tokens\n")
    if args.lora:
        from .lora import add_lora
        names = add_lora(model, r=args.lora, alpha=args.lora_alpha or 2.0 * args.lora)
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        saved = "; merged into the weights by --save" if args.save else ""
        saved += "; written as a PEFT adapter directory by --save-lora" if args.save_lora else ""
        sys.stderr.write(f"LoRA: rank {args.lora} adapters on {len(names)} projections, {n_train / 1e6:.2f}M trainable "
                         f"parameters (every model weight frozen{saved})\n")
    model.train()
    if args.checkpointing:
        model.gradient_checkpointing_enable()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(args.seed)
    starts_max = ids.numel() - args.seq_len
    log_every = args.log_every or max(1, args.steps // 20)
    losses, t0, n_tok, step, stop = [], time.perf_counter(), 0, 0, []
    import signal
    import threading

    def on_signal(signum, frame):   # (a step is never cut in half: an optimizer step half applied is no checkpoint)
        if stop:
            raise KeyboardInterrupt
        stop.append(signum)
        try:
            then = ", then saving" if args.save or args.save_lora else ""
            sys.stderr.write(f"\n{signal.Signals(signum).name}: stopping after step {step}{then} (again: stop at "
                             "once, nothing saved)\n")
            sys.stderr.flush()
        except RuntimeError:        # (the signal came while the loop wrote a line: a reentrant write is refused)
            pass
    main_thread = threading.current_thread() is threading.main_thread()    # (signal.signal works there only)
    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)} if main_thread else {}
    try:
        for step in range(1, args.steps + 1):
            starts = torch.randint(0, starts_max + 1, (args.batch,), generator=gen)
            batch = torch.stack([ids[s:s + args.seq_len] for s in starts.tolist()]).to(model.device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                loss = model(batch, labels=batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            if not math.isfinite(losses[-1]):   # (fp16 weights under AdamW did this, then saved NaN weights: exit 0)
                why = ("fp16 weights underflow AdamW's steps: use --dtype bfloat16 or float32; else a lower --lr"
                       if model.dtype == torch.float16 else f"a lower --lr than {args.lr:g} may train")
                _fail(f"the loss is {losses[-1]} at step {step}: training diverged ({why}); nothing saved", code=1)
            n_tok += batch.numel()
            if step % log_every == 0 or step == args.steps or stop:
                dt = time.perf_counter() - t0
                recent = losses[-log_every:]
                sys.stderr.write(f"step {step:6d}/{args.steps} | loss {sum(recent) / len(recent):.4f} | "
                                 f"{n_tok / max(dt, 1e-9):9.1f} tok/s | {_duration(dt):>7} | "
                                 f"{'stopped' if stop else 'ETA ' + _duration(dt / step * (args.steps - step))}\n")
                sys.stderr.flush()
            if stop:
                break
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    done = len(losses)
    k = max(1, min(10, done // 4))
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    sys.stderr.write(f"trained {done}{'' if done == args.steps else f' of {args.steps}'} steps of {args.batch} x "
                     f"{args.seq_len} tokens in {time.perf_counter() - t0:.1f} s: loss {first:.4f} (first {k} steps) "
                     f"-> {last:.4f} (last {k})\n")
    after = '' if not stop else f' (after step {done} of {args.steps})'
    if args.save_lora:                              # (before --save's merge, which folds the adapters away)
        from .lora import save_lora
        try:
            save_lora(model, args.save_lora)        # (base_model_name_or_path: --model as named, _load; built-in: null)
        except OSError as e:                        # (a full disk, a directory removed meanwhile)
            _fail(f"--save-lora {args.save_lora!r}: {e}")
        except KeyboardInterrupt:
            _fail(f"interrupted while saving: {args.save_lora!r} holds incomplete adapters", 130)
        import shlex
        model_flag = f" --model {shlex.quote(args.model)}" if args.model else ""
        sys.stderr.write(f"saved the LoRA adapters{after} to {args.save_lora} (python3 -m jamba_ext generate"
                         f"{model_flag} --adapter {shlex.quote(args.save_lora)} --prompt ...)\n")
    if args.save:
        model.gradient_checkpointing_disable()
        if args.lora:
            from .lora import merge_lora
            merge_lora(model)
        try:
            model.save_pretrained(args.save)
            from .tokenizer import ByteTokenizer
            if isinstance(tok, ByteTokenizer):
                with open(os.path.join(args.save, ByteTokenizer.MARKER), "w") as f:
                    f.write("byte-level tokenizer (jamba_ext.tokenizer.ByteTokenizer)\n")
            elif args.model:                            # (what: the checkpoint's local directory, a Hub id resolved)
                import shutil
                for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                             "chat_template.jinja"):
                    src, dst = os.path.join(what, name), os.path.join(args.save, name)
                    # (--save into --model's own directory: the files are there already; copying a file onto
                    # itself raised SameFileError, exit 2 after the weights were written)
                    if os.path.isfile(src) and not (os.path.exists(dst) and os.path.samefile(src, dst)):
                        shutil.copy(src, dst)
        except OSError as e:                        # (a full disk, a directory removed meanwhile)
            _fail(f"--save {args.save!r}: {e}")
        except KeyboardInterrupt:
            _fail(f"interrupted while saving: {args.save!r} holds an incomplete checkpoint", 130)
        sys.stderr.write(f"saved{after} to {args.save} "
                         f"(python3 -m jamba_ext generate --model {args.save} --prompt ...)\n")
    return 128 + stop[0] if stop else 0


class _Parser(argparse.ArgumentParser):
    """argparse's errors as one line naming the command and where its options are listed (argparse prints the whole
    usage, 15 lines for generate, with the error last)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (options: {self.prog} --help)\n")


ADAPTER_HELP = ("a LoRA adapter directory (train --save-lora's, or PEFT's for a Jamba with these projection names) "
                "loaded onto the model and merged into its weights (jamba_ext.lora.load_lora, merge_lora)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="jamba-ext", description="Jamba on the jamba_ext native kernels.")
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate text from a prompt")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="the prompt text (\"\": generate from the BOS token alone, where the tokenizer "
                                      "has one)")
    src.add_argument("--prompt-file", metavar="PATH", help="read the prompt from a UTF-8 text file (not echoed)")
    src.add_argument("--prompts-file", metavar="PATH",
                     help="many prompts, one per line (a .jsonl file: a JSON string or an object with a \"prompt\" "
                          "and optionally its own \"max_new_tokens\" per line, for prompts with newlines), run in "
                          "batches; a JSON object per prompt "
                          "(index, prompt, completion, prompt_tokens, completion_tokens, finish_reason) goes to "
                          "stdout or --output, in the file's order")
    src.add_argument("--interactive", action="store_true",
                     help="chat: each line on stdin is the user's next message, the conversation goes through the "
                          "checkpoint's chat template (implies --chat); /reset starts over, /exit or end of input "
                          "stops")
    g.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help="with --prompts-file: prompts per generate() call (default 16; longest prompts first, so "
                        "that a batch's prompts have similar lengths)")
    g.add_argument("--continuous", action="store_true",
                   help="with --prompts-file: continuous batching, --batch-size rows decoding together, a row whose "
                        "completion ends taking the next prompt at once (faster when completions differ in length; "
                        "greedy or sampled decoding, --repetition-penalty, --min-new-tokens and --stop only)")
    g.add_argument("--output", default=None, metavar="PATH",
                   help="with --prompts-file: write the JSON Lines here instead of stdout")
    g.add_argument("--chat", action="store_true",
                   help="the prompt is a user's message: formatted by the checkpoint's chat template (an instruct "
                        "model's chat_template.jinja or tokenizer_config.json), only the reply printed")
    g.add_argument("--system", default=None, metavar="TEXT", help="with --chat: a system message before it")
    g.add_argument("--stop", action="append", default=None, metavar="TEXT",
                   help="stop once the text holds TEXT (repeatable; transformers' stop_strings: needs a checkpoint's "
                        "tokenizer.json and transformers)")
    g.add_argument("--prefill-chunk", type=int, default=None, metavar="N",
                   help="run the prompt through the cache in chunks of N tokens (default: 16384 tokens; 0: one "
                        "forward); long prompts then need the memory of one chunk")
    g.add_argument("--model", default=None, metavar="DIR",
                   help="transformers Jamba checkpoint: a local directory or a Hugging Face Hub id such as "
                        "ai21labs/Jamba-v0.1 (downloaded; needs huggingface_hub) (default: built-in small random model)")
    g.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda when available)")
    g.add_argument("--device-map", default=None,
                   help="the model's layers over several GPUs: auto (one GPU when it fits), balanced (every visible "
                        "GPU), or a comma list such as cuda:0,cuda:1 (jamba_ext.placement; the decode replays one "
                        "CUDA graph per GPU)")
    g.add_argument("--max-memory", default=None, metavar="DEV=SIZE,...",
                   help="with --device-map auto / balanced: the most each GPU may hold of the weights, e.g. "
                        "0=40GiB,1=80GiB (the layers are shared out in proportion)")
    g.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="default: bfloat16 on cuda, float32 on cpu")
    g.add_argument("--adapter", default=None, metavar="DIR", help=ADAPTER_HELP)
    g.add_argument("--experts-fp8", action="store_true",
                   help="store the MoE expert weights in fp8 (float8_e4m3fn, one scale per row; quantized while the "
                        "checkpoint loads): Jamba-v0.1 needs ~58 GB instead of ~104 GB, one 80 GB GPU")
    g.add_argument("--act-fp8", action="store_true",
                   help="with --experts-fp8: let the MoE quantize its activations to fp8 too (per row, W8A8; on "
                        "Hopper GPUs from 7 tokens a step: prefill's experts 1.6-2.3x faster, at ~6.6%% instead of "
                        "~4.7%% rms error per expert output)")
    g.add_argument("--max-new-tokens", type=int, default=32, metavar="N",
                   help="tokens to generate after the prompt (default 32; fewer at an end-of-text token or --stop)")
    g.add_argument("--min-new-tokens", type=int, default=0, help="no end-of-text token before this many new tokens")
    g.add_argument("--seed", type=int, default=DEFAULT_SEED, help="weights of the built-in model and sampling")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    g.add_argument("--top-k", type=int, default=0, help="when sampling, keep the K most likely tokens (0: all)")
    g.add_argument("--top-p", type=float, default=1.0,
                   help="when sampling, keep the most likely tokens up to this much probability (1.0: all)")
    g.add_argument("--min-p", type=float, default=None,
                   help="when sampling, drop tokens less likely than this times the most likely one (e.g. 0.05)")
    g.add_argument("--top-h", type=float, default=None, metavar="H",
                   help="when sampling, top-H: keep the most likely tokens while their entropy stays within H times "
                        "the distribution's, H in (0, 1] (transformers' top_h)")
    g.add_argument("--num-beams", type=int, default=1, metavar="N",
                   help="beam search over N beams (with --temperature > 0: beam sampling); the best text is printed "
                   "when the search ends")
    g.add_argument("--no-repeat-ngram-size", type=int, default=0, metavar="N",
                   help="no N tokens in a row may repeat an earlier N-gram of the text (0: off)")
    g.add_argument("--repetition-penalty", type=float, default=1.0,
                   help="> 1 makes tokens already in the text less likely (transformers' semantics; 1.0: none)")
    bar = g.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None,
                     help=f"always show the progress bars and the weight-loading lines (default: the prefill bar "
                     f"for a prompt of more than one chunk, the decode bar from "
                     f"{PROGRESS_MIN_TOKENS} new tokens on, the loading lines for checkpoints over 1 GB)")
    bar.add_argument("--no-progress", dest="progress", action="store_false")
    cg = g.add_mutually_exclusive_group()
    cg.add_argument("--cuda-graph", dest="cuda_graph", action="store_true", default=None,
                    help="replay each decode step from a captured CUDA graph (default on a CUDA device: ~3x faster "
                         "decoding at batch 1)")
    cg.add_argument("--no-cuda-graph", dest="cuda_graph", action="store_false", help="decode eagerly")
    g.set_defaults(func=cmd_generate)
    t = sub.add_parser("train", help="fine-tune the model on a text file (next-token loss)")
    t.add_argument("--text-file", required=True, metavar="PATH", help="UTF-8 training text")
    t.add_argument("--model", default=None, metavar="DIR",
                   help="transformers Jamba checkpoint: a local directory or a Hugging Face Hub id such as "
                        "ai21labs/Jamba-v0.1 (downloaded; needs huggingface_hub) (default: built-in small random "
                        "model)")
    t.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda when available)")
    t.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="weights' dtype (default float32, the step under bf16 autocast on a GPU; with --lora on a "
                        "GPU, bfloat16)")
    t.add_argument("--no-autocast", action="store_true", help="no bf16 autocast on a GPU")
    t.add_argument("--steps", type=int, default=100, help="optimizer steps (default 100)")
    t.add_argument("--batch", type=int, default=4, help="sequences per step")
    t.add_argument("--seq-len", type=int, default=256, help="tokens per sequence")
    t.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default 1e-3: the small model)")
    t.add_argument("--lora", type=int, default=0, metavar="R",
                   help="train rank-R adapters on the Mamba, attention and MLP projections instead of every weight "
                        "(the weights frozen, bf16 on a GPU: how a large checkpoint fits one GPU); --save merges them, "
                        "--save-lora writes them alone")
    t.add_argument("--lora-alpha", type=float, default=0.0, help="the adapters' scale alpha / R (default alpha: 2R)")
    t.add_argument("--experts-fp8", action="store_true",
                   help="MoE expert weights in fp8 (float8_e4m3fn, one scale per row), frozen; with --lora (the "
                        "adapters and the router train): Jamba-v0.1's weights in ~58 GB instead of ~104 GB")
    t.add_argument("--checkpointing", action="store_true", help="gradient checkpointing (less activation memory)")
    t.add_argument("--log-every", type=int, default=0, metavar="N",
                   help="a line every N steps: the mean loss since the last, tokens/s, time so far, ETA (default: 20 "
                        "lines)")
    t.add_argument("--save", default=None, metavar="DIR",
                   help="write the trained checkpoint here (Ctrl-C: the steps done so far; exit status 130)")
    t.add_argument("--save-lora", default=None, metavar="DIR",
                   help="with --lora: write the trained adapters, not merged, here as a PEFT adapter directory "
                        "(adapter_config.json + adapter_model.safetensors; generate --adapter and PEFT read it; works "
                        "with --experts-fp8; Ctrl-C: the steps done so far)")
    t.add_argument("--seed", type=int, default=DEFAULT_SEED, help="weights of the built-in model and the batches")
    t.set_defaults(func=cmd_train, progress=None)
    v = sub.add_parser("serve", help="an HTTP server with OpenAI-style completion endpoints (continuous batching)")
    v.add_argument("--model", default=None, metavar="DIR",
                   help="transformers Jamba checkpoint: a local directory or a Hugging Face Hub id (default: built-in "
                        "small random model)")
    v.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda when available)")
    v.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="default: bfloat16 on cuda, float32 on cpu")
    v.add_argument("--adapter", default=None, metavar="DIR", help=ADAPTER_HELP)
    v.add_argument("--experts-fp8", action="store_true", help="MoE expert weights in fp8 (as generate's)")
    v.add_argument("--act-fp8", action="store_true", help="with --experts-fp8: fp8 activations too (as generate's)")
    v.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    v.add_argument("--port", type=int, default=8000)
    v.add_argument("--api-key", default=None, metavar="KEY",
                   help="the /v1 endpoints need \"Authorization: Bearer KEY\" (401 otherwise); default: env "
                        "JAMBA_EXT_API_KEY, else no check. /health and /metrics stay open")
    v.add_argument("--batch-size", type=int, default=16, metavar="N", help="rows decoding together (default 16)")
    v.add_argument("--max-prompt-tokens", type=int, default=4096, metavar="N",
                   help="the longest prompt taken (default 4096; the KV cache holds N + 2 x --max-new-tokens "
                        "positions a row)")
    v.add_argument("--max-new-tokens", type=int, default=256, metavar="N",
                   help="the largest max_tokens a request may ask for (default 256)")
    v.add_argument("--seed", type=int, default=DEFAULT_SEED, help="weights of the built-in model and sampling")
    v.add_argument("--temperature", type=float, default=0.0,
                   help="0 = greedy (default); > 0 samples. These settings apply to requests that leave them out")
    v.add_argument("--top-k", type=int, default=0, help="as generate's (0: all tokens)")
    v.add_argument("--top-p", type=float, default=1.0, help="as generate's (1.0: all tokens)")
    v.add_argument("--min-p", type=float, default=None, help="as generate's (default: off)")
    v.add_argument("--repetition-penalty", type=float, default=1.0, help="as generate's (1.0: none)")
    v.add_argument("--prefill-ahead", type=int, default=None, metavar="N",
                   help="when a row needs a prompt, prefill the queued prompts after it too, up to N tokens in all, "
                        "in one pass over the weights; they wait, ready, for the next free rows (default 8192; 0: "
                        "only the idle rows' prompts)")
    v.add_argument("--stats-every", type=float, default=10.0, metavar="S",
                   help="a progress line on stderr every S seconds while requests run (requests done, new tokens/s, "
                        "rows running, queued), and one when it falls idle (default 10; 0: none)")
    v.add_argument("--idle-timeout", type=float, default=60.0, metavar="S",
                   help="close a connection silent for S seconds while the server waits for its request (line and "
                        "headers), new or kept alive after an answer (default 60; 0: no limit). A running request, "
                        "streamed or not, is never cut by it")
    v.set_defaults(func=cmd_serve, progress=None)
    c = sub.add_parser("check", help="self-check: every op on this machine's devices against the float64 reference")
    c.add_argument("--device", default="all", help="cpu, cuda[:N] or all (default: CPU and every visible GPU)")
    c.add_argument("--dtype", action="append", choices=["float32", "bfloat16", "float16"],
                   help="activation dtype (repeatable; default: all three)")
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(func=cmd_check)
    # (main: an unknown flag is reported by its command's parser)
    p.commands = {"generate": g, "train": t, "serve": v, "check": c}
    return p


def cmd_serve(args) -> int:
    """serve: the model behind an HTTP server (jamba_ext.server) until Ctrl-C."""
    from . import server
    for flag, v in (("--batch-size", args.batch_size), ("--max-prompt-tokens", args.max_prompt_tokens),
                    ("--max-new-tokens", args.max_new_tokens)):
        if v < 1:
            _fail(f"{flag} must be >= 1")
    if not 0 <= args.port <= 65535:
        _fail("--port must be in [0, 65535]")
    if not args.stats_every >= 0:
        _fail("--stats-every must be >= 0 (0: no progress lines)")
    if not 0 <= args.idle_timeout < float("inf"):
        _fail("--idle-timeout must be >= 0 seconds (0: no limit)")
    if args.prefill_ahead is not None and args.prefill_ahead < 0:
        _fail("--prefill-ahead must be >= 0 (tokens; 0: off)")
    if not args.temperature >= 0 or not 0 < args.top_p <= 1 or args.top_k < 0 or \
            not 0 < args.repetition_penalty < float("inf"):
        _fail("--temperature must be >= 0, --top-p in (0, 1], --top-k >= 0 and --repetition-penalty a finite "
              "number > 0")
    if args.min_p is not None and not 0 <= args.min_p <= 1:
        _fail("--min-p must be in [0, 1]")
    key = args.api_key if args.api_key is not None else os.environ.get("JAMBA_EXT_API_KEY") or None
    if key is not None and not key.strip():
        _fail("--api-key must not be empty")
    import torch
    torch.manual_seed(args.seed)
    model, tok, what = _load(args)
    tmpl = None
    if args.model is not None:                    # (what: the checkpoint's directory)
        from .tokenizer import load_chat_template
        try:
            tmpl = load_chat_template(what)
        except (ValueError, ImportError, OSError):
            tmpl = None                           # (no template: /v1/chat/completions answers 400)
    name = args.model or "jamba-ext-builtin"

    def ready(httpd):
        h, p = httpd.server_address[:2]
        sys.stderr.write(f"model: {what} | {model.device} {model.dtype}\nserving {name} on http://{h}:{p} "
                         f"(/v1/completions{', /v1/chat/completions' if tmpl is not None else ''}, /v1/models, "
                         f"/health, /metrics): {args.batch_size} rows, prompts up to {args.max_prompt_tokens} tokens, "
                         f"up to {args.max_new_tokens} new tokens each{'; API key required' if key else ''}; "
                         "Ctrl-C or SIGTERM stops\n")
    import signal
    import threading

    def term(signum, frame):                      # (SIGTERM, as a container's stop sends: as Ctrl-C, a clean stop)
        raise KeyboardInterrupt
    main_thread = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGTERM, term) if main_thread else None
    try:
        server.serve(model, tok, args.host, args.port, model_name=name, chat_template=tmpl, ready=ready, api_key=key,
                     batch_size=args.batch_size, max_prompt_tokens=args.max_prompt_tokens,
                     max_new_tokens=args.max_new_tokens, seed=args.seed, do_sample=args.temperature > 0,
                     temperature=args.temperature or 1.0, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                     repetition_penalty=args.repetition_penalty, stats_every=args.stats_every,
                     idle_timeout=args.idle_timeout,
                     **({} if args.prefill_ahead is None else dict(prefill_ahead=args.prefill_ahead)))
    except OSError as e:
        _fail(f"serve: cannot listen on {args.host}:{args.port}: {e}")
    except KeyboardInterrupt:
        sys.stderr.write("stopped\n")
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, old)
    return 0


def cmd_check(args) -> int:
    from . import selfcheck
    return selfcheck.main(args)


def main(argv=None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:                 # argparse would print the top-level usage; the command's own is the useful one
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    if not -2 ** 63 <= getattr(args, "seed", 0) < 2 ** 64:   # (torch's and generate()'s range: a traceback before)
        _fail("--seed must be an int in [-2^63, 2^64)")
    try:
        return args.func(args)
    except BrokenPipeError:  # the reader went away (e.g. `| head`): stop quietly, as other command-line tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that the interpreter's final flush does not raise again
        return 1
    except (MemoryError, RuntimeError) as e:   # (torch.OutOfMemoryError is a RuntimeError; the CPU's allocator too)
        if not _out_of_memory(e):
            raise
        hint = {"train": "a smaller --batch or --seq-len, --checkpointing, or --lora R may fit"}.get(  # (train's
            args.command, "a smaller --max-new-tokens, --batch-size or prompt may fit")     # flags, not generate's)
        _fail(f"out of memory: {str(e).strip().splitlines()[-1][:300]} ({hint})", 1)


def _out_of_memory(e: BaseException) -> bool:
    """An allocation that failed: torch's OutOfMemoryError (CUDA), the CPU allocator's error, a MemoryError"""
    import torch
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(e, MemoryError) or (oom != () and isinstance(e, oom)) or "can't allocate memory" in str(e)


if __name__ == "__main__":
    sys.exit(main())
