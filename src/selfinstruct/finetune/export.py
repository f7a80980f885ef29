"""Write what llama.cpp loads: a GGUF LoRA adapter, or a whole fine-tuned GGUF model.

The LoRA adapter follows llama.cpp's own converter (convert_lora_to_gguf.py):

* metadata ``general.type = "adapter"``, ``general.architecture`` equal to the base model's
  (llama.cpp refuses a mismatch), ``adapter.type = "lora"`` and ``adapter.lora.alpha``
  (float32; llama.cpp scales by ``lora_scale * alpha / rank``, as peft does with alpha / r);
* for each adapted base tensor ``blk.N.attn_q.weight`` two tensors ``...weight.lora_a`` of
  torch shape (rank, in) and ``...weight.lora_b`` of shape (out, rank);
* llama-architecture GGUF files store the rows of the Q and K projections permuted for
  llama.cpp's rotary embedding (transformers undoes it when it loads the file); B's rows, the
  output side, get the same permutation so that B @ A is added to the tensor as stored.

Only the file's header is read here (a small reader, faster than gguf.GGUFReader, which decodes
every vocabulary string into its own numpy view); tensor data is copied from the base file only
when a full model is written.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from selfinstruct.errors import ConfigError, DataFileError
from selfinstruct.runfolder import FinetuneFolder

if TYPE_CHECKING:
    from selfinstruct.finetune.local import LocalConfig

# transformers' module names -> llama.cpp's tensor names, for the llama family
PROJECTIONS = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
LAYER_PARTS = {
    **PROJECTIONS,
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}
TOP_LEVEL = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
# Architectures whose adapters this module writes (and has checked against llama.cpp).
SUPPORTED_ARCHS = ("llama",)
FULL_TYPES = ("f16", "q8_0", "f32")

_LORA_KEY = re.compile(
    r"layers\.(?P<layer>\d+)\.(?P<module>self_attn\.\w+_proj|mlp\.\w+_proj)"
    r"\.lora_(?P<ab>[AB])(?:\.[\w-]+)?\.weight$"
)
_LAYER_KEY = re.compile(r"^model\.layers\.(?P<layer>\d+)\.(?P<part>[\w.]+)\.weight$")


# --- reading a GGUF header -------------------------------------------------------------------

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q"}
_SCALARS.update({11: "<q", 12: "<d"})
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy order (outermost first), as gguf-py reports it
    ggml_type: int
    offset: int  # from the start of the data section


@dataclass
class GGUFHeader:
    path: Path
    kv: dict[str, tuple[int, Any, int | None]] = field(default_factory=dict)  # type, value, sub
    tensors: list[TensorInfo] = field(default_factory=list)
    data_offset: int = 0

    def get(self, key: str, default: Any = None) -> Any:
        item = self.kv.get(key)
        if item is None:
            return default
        value = item[1]
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else value

    @property
    def arch(self) -> str:
        return str(self.get("general.architecture", ""))


def _read(f: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise EOFError
    return struct.unpack(fmt, data)[0]


def _read_string(f: BinaryIO) -> bytes:
    n = _read(f, "<Q")
    data = f.read(n)
    if len(data) != n:
        raise EOFError
    return data


def _read_value(f: BinaryIO, vtype: int) -> tuple[Any, int | None]:
    if vtype in _SCALARS:
        return _read(f, _SCALARS[vtype]), None
    if vtype == _STRING:
        return _read_string(f), None
    if vtype == _ARRAY:
        sub = _read(f, "<I")
        n = _read(f, "<Q")
        if sub == _STRING:
            return [_read_string(f) for _ in range(n)], sub
        if sub in _SCALARS:
            fmt = _SCALARS[sub]
            size = struct.calcsize(fmt)
            raw = f.read(size * n)
            return list(struct.unpack(f"<{n}{fmt[1]}", raw)), sub
        raise ValueError(f"unsupported array element type {sub}")
    raise ValueError(f"unsupported value type {vtype}")


def read_gguf_header(path: str | Path) -> GGUFHeader:
    """Metadata and tensor table of a GGUF file (little-endian, version 2 or 3)."""
    path = Path(path)
    header = GGUFHeader(path)
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise DataFileError(f"{path}: not a GGUF file")
            version = _read(f, "<I")
            if version not in (2, 3):
                raise DataFileError(f"{path}: GGUF version {version} is not supported")
            n_tensors = _read(f, "<Q")
            n_kv = _read(f, "<Q")
            for _ in range(n_kv):
                key = _read_string(f).decode("utf-8")
                vtype = _read(f, "<I")
                value, sub = _read_value(f, vtype)
                header.kv[key] = (vtype, value, sub)
            for _ in range(n_tensors):
                name = _read_string(f).decode("utf-8")
                n_dims = _read(f, "<I")
                dims = [_read(f, "<Q") for _ in range(n_dims)]
                ggml_type = _read(f, "<I")
                offset = _read(f, "<Q")
                header.tensors.append(TensorInfo(name, tuple(reversed(dims)), ggml_type, offset))
            alignment = int(header.get("general.alignment", 32))
            pos = f.tell()
            header.data_offset = pos + (-pos % alignment)
    except (EOFError, ValueError, UnicodeDecodeError) as e:
        raise DataFileError(f"{path}: damaged GGUF header ({e or 'truncated'})") from None
    return header


# --- names and layouts -----------------------------------------------------------------------


def permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's Q/K row order: within each head, interleaved halves become two blocks."""
    rows = w.shape[0]
    if rows % (2 * n_head):
        raise ValueError(f"{rows} rows do not split into {n_head} heads of two halves")
    out = w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2)
    return np.ascontiguousarray(out.reshape(w.shape))


def _head_counts(header: GGUFHeader) -> tuple[int, int]:
    arch = header.arch
    n_head = header.get(f"{arch}.attention.head_count")
    n_kv = header.get(f"{arch}.attention.head_count_kv", n_head)
    if not isinstance(n_head, int) or not isinstance(n_kv, int):
        raise DataFileError(f"{header.path}: no {arch}.attention.head_count in the GGUF metadata")
    return n_head, n_kv


def check_exportable(header: GGUFHeader) -> None:
    """Refuse, before any training, a base whose fine-tune could not be written as GGUF."""
    if header.arch not in SUPPORTED_ARCHS:
        raise ConfigError(
            f"{header.path.name}: fine-tuning writes GGUF files for the"
            f" {', '.join(SUPPORTED_ARCHS)} architecture (SmolLM2, Llama, Mistral, ...), and"
            f" this base is {header.arch!r}"
        )


def lora_tensors(state: Mapping[str, Any], header: GGUFHeader) -> list[tuple[str, np.ndarray]]:
    """peft's lora_A/lora_B weights as llama.cpp's (name.lora_a, name.lora_b) tensors."""
    check_exportable(header)
    n_head, n_kv = _head_counts(header)
    shapes = {t.name: t.shape for t in header.tensors}
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, value in state.items():
        m = _LORA_KEY.search(key)
        if m is None:
            continue
        module = m.group("module")
        if module not in PROJECTIONS:
            raise ConfigError(f"LoRA on {module!r} cannot be written as a GGUF adapter")
        base = f"blk.{m.group('layer')}.{PROJECTIONS[module]}.weight"
        arr = value.detach().float().cpu().numpy() if hasattr(value, "detach") else value
        pairs.setdefault(base, {})[m.group("ab")] = np.asarray(arr, dtype=np.float32)
    if not pairs:
        raise ConfigError("the model has no LoRA weights to export")
    out: list[tuple[str, np.ndarray]] = []
    for base in sorted(pairs, key=_natural):
        ab = pairs[base]
        if set(ab) != {"A", "B"}:
            raise ConfigError(f"LoRA weights for {base} lack their A or B half")
        a, b = ab["A"], ab["B"]
        if base not in shapes:
            raise ConfigError(f"{header.path.name} has no tensor {base}: wrong base model?")
        out_rows, in_cols = shapes[base]
        if a.shape[1] != in_cols or b.shape[0] != out_rows or a.shape[0] != b.shape[1]:
            raise ConfigError(
                f"LoRA shapes A{a.shape} B{b.shape} do not fit {base} {shapes[base]}:"
                " wrong base model?"
            )
        if base.endswith(".attn_q.weight"):
            b = permute_rows(b, n_head)
        elif base.endswith(".attn_k.weight"):
            b = permute_rows(b, n_kv)
        out.append((base + ".lora_a", np.ascontiguousarray(a)))
        out.append((base + ".lora_b", np.ascontiguousarray(b)))
    return out


def _natural(name: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def write_lora_gguf(
    path: str | Path,
    state: Mapping[str, Any],
    base: GGUFHeader,
    *,
    alpha: float,
    name: str = "selfinstruct-lora",
) -> int:
    """Write the adapter; returns how many tensors it holds. Written beside, then renamed."""
    import gguf

    tensors = lora_tensors(state, base)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    writer = gguf.GGUFWriter(str(tmp), base.arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_name(name)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
    for tensor_name, data in tensors:
        writer.add_tensor(tensor_name, data)
    _finish(writer)
    tmp.replace(path)
    return len(tensors)


def _finish(writer: Any) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# --- a whole model ---------------------------------------------------------------------------


def hf_to_gguf_name(key: str) -> str | None:
    if key in TOP_LEVEL:
        return TOP_LEVEL[key]
    m = _LAYER_KEY.match(key)
    if m and m.group("part") in LAYER_PARTS:
        return f"blk.{m.group('layer')}.{LAYER_PARTS[m.group('part')]}.weight"
    return None


def write_full_gguf(
    path: str | Path,
    state: Mapping[str, Any],
    base: GGUFHeader,
    *,
    out_type: str = "f16",
    name: str | None = None,
) -> int:
    """A complete GGUF: the base file's metadata, every tensor from `state` (transformers
    names), matrices at `out_type` (f16, q8_0 or f32) and vectors at f32. A base tensor with no
    counterpart in `state` (rope tables, say) is copied as it is. Returns the tensor count."""
    import gguf

    check_exportable(base)
    if out_type not in FULL_TYPES:
        raise ConfigError(f"`gguf_type` must be one of {', '.join(FULL_TYPES)}")
    qtype, file_type = _gguf_types(out_type)
    n_head, n_kv = _head_counts(base)
    by_gguf = _by_gguf_name(state)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    writer = gguf.GGUFWriter(str(tmp), base.arch)
    _copy_metadata(writer, base, name)
    writer.add_file_type(int(file_type))
    with open(base.path, "rb") as raw:
        for info in base.tensors:
            value = by_gguf.get(info.name)
            if value is None:
                data = _raw_tensor(raw, base, info)
                writer.add_tensor(
                    info.name, data, raw_dtype=gguf.GGMLQuantizationType(info.ggml_type)
                )
                continue
            arr = _trained_array(value, info)
            if info.name.endswith(".attn_q.weight"):
                arr = permute_rows(arr, n_head)
            elif info.name.endswith(".attn_k.weight"):
                arr = permute_rows(arr, n_kv)
            _add_at_type(writer, info.name, arr, qtype)
    _finish(writer)
    tmp.replace(path)
    return len(base.tensors)


def _gguf_types(out_type: str) -> tuple[Any, Any]:
    """gguf's (tensor type, file type) for f16, q8_0 or f32."""
    import gguf

    qtype = {
        "f16": gguf.GGMLQuantizationType.F16,
        "q8_0": gguf.GGMLQuantizationType.Q8_0,
        "f32": gguf.GGMLQuantizationType.F32,
    }[out_type]
    file_type = {
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
        "f32": gguf.LlamaFileType.ALL_F32,
    }[out_type]
    return qtype, file_type


def _by_gguf_name(state: Mapping[str, Any]) -> dict[str, Any]:
    """The tensors of a transformers state dict under their GGUF names; others left out."""
    by_gguf = {}
    for key, value in state.items():
        target = hf_to_gguf_name(key)
        if target is not None:
            by_gguf[target] = value
    return by_gguf


def _copy_metadata(writer: Any, base: GGUFHeader, name: str | None) -> None:
    """The base file's key/values, less those the writer sets itself; `name` replaces
    general.name when given."""
    import gguf

    for key, (vtype, value, sub) in base.kv.items():
        if key in ("general.architecture", "general.file_type", "general.alignment"):
            continue
        if key == "general.name" and name:
            value = name
        writer.add_key_value(key, value, gguf.GGUFValueType(vtype), _sub(gguf, sub))


def _trained_array(value: Any, info: TensorInfo) -> np.ndarray:
    """A trained tensor (torch or numpy) as float32 numpy, checked against the base's shape."""
    arr = value.detach().float().cpu().numpy() if hasattr(value, "detach") else value
    arr = np.asarray(arr, dtype=np.float32)
    if arr.shape != info.shape:
        raise ConfigError(
            f"tensor {info.name}: trained shape {arr.shape} differs from the base"
            f" file's {info.shape}"
        )
    return arr


def _add_at_type(writer: Any, name: str, arr: np.ndarray, qtype: Any) -> None:
    """Vectors at f32, matrices at `qtype` (F32, F16 or Q8_0)."""
    import gguf

    if arr.ndim < 2 or qtype == gguf.GGMLQuantizationType.F32:
        writer.add_tensor(name, np.ascontiguousarray(arr))
    elif qtype == gguf.GGMLQuantizationType.F16:
        writer.add_tensor(name, arr.astype(np.float16))
    else:
        data = gguf.quants.quantize(arr, qtype)
        writer.add_tensor(name, data, raw_dtype=qtype)


def _sub(gguf: Any, sub: int | None) -> Any:
    return None if sub is None else gguf.GGUFValueType(sub)


def _raw_tensor(f: BinaryIO, header: GGUFHeader, info: TensorInfo) -> np.ndarray:
    import gguf

    block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(info.ggml_type)]
    n = int(np.prod(info.shape))
    nbytes = n // block * type_size
    f.seek(header.data_offset + info.offset)
    data = np.frombuffer(f.read(nbytes), dtype=np.uint8)
    row_bytes = info.shape[-1] // block * type_size
    return data.reshape(*info.shape[:-1], row_bytes)


def export_trained(
    out: Path, model: Any, cfg: LocalConfig, base_header: Any, stack: dict[str, Any]
) -> dict[str, str]:
    """A trained model into its fine-tune folder: the whole model as GGUF (`cfg.full`), else
    the LoRA adapter as GGUF for llama.cpp and as peft's folder for transformers."""
    if cfg.full:
        path = FinetuneFolder(out).full_model
        write_full_gguf(path, model.state_dict(), base_header, out_type=cfg.gguf_type)
        return {"gguf_model": str(path)}
    peft_dir = FinetuneFolder(out).peft_dir
    model.save_pretrained(str(peft_dir), save_embedding_layers=False)
    state = {n: p for n, p in model.named_parameters() if "lora_" in n}
    path = FinetuneFolder(out).adapter
    write_lora_gguf(path, state, base_header, alpha=cfg.lora_alpha)
    return {"gguf_adapter": str(path), "peft_adapter": str(peft_dir)}
