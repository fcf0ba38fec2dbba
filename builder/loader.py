"""Load the source model in its own format and describe its signature.

Three formats: ONNX (signature read from the graph), TorchScript (signature from
``model.inputs``; outputs discovered by running it once) and Hugging Face encoder directories
(config + safetensors + tokenizer). A Hugging Face encoder is wrapped so that it returns both
``last_hidden_state`` and ``sentence_embedding`` (the pooling of the directory's
sentence-transformers config, default mean pooling over the attention mask): what users of an
embedding model actually consume, and what the accuracy gate compares.

The loaded model carries two PyTorch modules when it has any: ``module`` is the model exactly as
users run it (the benchmark baseline and the FP32 reference), ``export_module`` the one exported
to ONNX (eager attention, which exports to the patterns ONNX Runtime's transformer fusions
recognise; optionally pruned).
"""

from __future__ import annotations

import functools
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from optimodel.api.spec import ModelSource
from optimodel.builder.errors import BuildError, wrap
from optimodel.builder.tensors import ONNX_TO_TRITON, TensorInfo

log = logging.getLogger("optimodel.builder")

DEFAULT_SEQ_LEN = 128
# Model types whose graphs onnxruntime.transformers' BERT fusions understand.
BERT_LIKE = {"bert", "roberta", "xlm-roberta", "distilbert", "electra", "camembert", "mpnet",
             "albert", "deberta", "deberta-v2"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")


@dataclass
class LoadedModel:
    """The source model, ready for export, reference outputs and baseline timing."""

    format: str
    path: Path
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    baseline_runtime: str
    module: Any = None
    export_module: Any = None
    onnx_path: Path | None = None
    tokenizer: Any = None
    seq_len: int | None = None
    max_seq_len: int | None = None
    transformer: dict | None = None  # {"model_type", "num_heads", "hidden_size"} for fusion
    warnings: list[str] = field(default_factory=list)

    @property
    def is_text(self) -> bool:
        return self.tokenizer is not None


def load(source: ModelSource, path: Path, work: Path) -> LoadedModel:
    """Dispatch on the declared format; a file that is not what the spec says fails clearly."""
    if source.format == "onnx":
        return _load_onnx(source, path, work)
    if source.format == "torchscript":
        return _load_torchscript(source, path)
    if source.format == "huggingface":
        return _load_huggingface(source, path)
    raise BuildError("InvalidSpec", f"unknown model format {source.format!r}")


def _single_file(path: Path, suffixes: tuple[str, ...], what: str) -> Path:
    if path.is_file():
        return path
    found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    if len(found) != 1:
        raise BuildError("ModelLoadFailed", f"{path} is a directory with {len(found)} {what} files "
                         f"({', '.join(suffixes)}); point the URI at exactly one")
    return found[0]


def _spec_inputs(source: ModelSource) -> list[TensorInfo] | None:
    if not source.inputs:
        return None
    return [TensorInfo(t.name, t.dtype, tuple(t.shape)) for t in source.inputs]


def _seq_len_from(inputs: list[TensorInfo] | None, limit: int | None) -> int:
    seq = DEFAULT_SEQ_LEN
    for info in inputs or []:
        if len(info.shape) >= 2 and info.shape[1] > 0:
            seq = info.shape[1]
            break
    return min(seq, limit) if limit else seq


# --------------------------------------------------------------------------- ONNX


def _load_onnx(source: ModelSource, path: Path, work: Path) -> LoadedModel:
    import onnx

    model_path = _single_file(path, (".onnx",), "ONNX")
    try:
        model = onnx.load(str(model_path))
    except Exception as exc:
        raise wrap("ModelLoadFailed", f"{model_path.name} is not a readable ONNX model: "
                         f"{type(exc).__name__}: {exc}", exc) from exc
    if not model.graph.node:
        raise BuildError("ModelLoadFailed", f"{model_path.name} has an empty graph (not an ONNX model?)")
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise wrap("ModelLoadFailed", f"{model_path.name} fails the ONNX checker: {exc}", exc) from exc

    initializers = {i.name for i in model.graph.initializer}
    inputs = [_onnx_tensor(v) for v in model.graph.input if v.name not in initializers]
    outputs = [_onnx_tensor(v) for v in model.graph.output]
    declared = _spec_inputs(source)
    if declared:
        by_name = {i.name: i for i in inputs}
        unknown = [d.name for d in declared if d.name not in by_name]
        if unknown:
            raise BuildError("InvalidSpec", f"model.inputs names {unknown} are not inputs of the "
                             f"graph (it has {sorted(by_name)})")
        inputs = [next((d for d in declared if d.name == i.name), i) for i in inputs]

    # A fixed batch dimension is made symbolic so one graph serves every batch size; a graph
    # whose internals hard-code the batch then fails the runnability check below.
    if any(i.shape and i.shape[0] != -1 for i in inputs + outputs):
        for value in list(model.graph.input) + list(model.graph.output):
            dims = value.type.tensor_type.shape.dim
            if dims:
                dims[0].Clear()
                dims[0].dim_param = "batch"
        model_path = work / "source-dynamic-batch.onnx"
        onnx.save(model, str(model_path))
        inputs = [TensorInfo(i.name, i.dtype, (-1, *i.shape[1:])) for i in inputs]
        outputs = [TensorInfo(o.name, o.dtype, (-1, *o.shape[1:])) for o in outputs]
        log.info("made the batch axis of %s dynamic", path.name)

    tokenizer, config = _optional_tokenizer_and_config(path if path.is_dir() else path.parent)
    seq_len = _seq_len_from(declared, None) if tokenizer is not None else None
    if tokenizer is None:
        for info in inputs:
            if any(d < 0 for d in info.dims):
                raise BuildError("InvalidSpec", f"input {info.name} has dynamic dimensions "
                                 f"{list(info.shape)}: give model.inputs with concrete shapes "
                                 "(batch may stay -1)")
    return LoadedModel(
        format="onnx", path=path, inputs=inputs, outputs=outputs,
        baseline_runtime="onnxruntime-fp32",
        onnx_path=model_path, tokenizer=tokenizer, seq_len=seq_len, max_seq_len=seq_len,
        transformer=_transformer_info(config),
    )


def _onnx_tensor(value) -> TensorInfo:
    ttype = value.type.tensor_type
    dtype = ONNX_TO_TRITON.get(ttype.elem_type)
    if dtype is None:
        raise BuildError("UnsupportedModel", f"tensor {value.name} has ONNX element type "
                         f"{ttype.elem_type}, which the builder does not support")
    dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1
                 for d in ttype.shape.dim)
    return TensorInfo(value.name, dtype, dims)


def _optional_tokenizer_and_config(directory: Path) -> tuple[Any, dict | None]:
    config = None
    if (directory / "config.json").is_file():
        try:
            config = json.loads((directory / "config.json").read_text())
        except ValueError:
            config = None
    if not any((directory / f).is_file() for f in TOKENIZER_FILES):
        return None, config
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(directory)), config
    except Exception as exc:
        log.warning("ignoring the tokenizer files next to the model: %s", exc)
        return None, config


def _transformer_info(config: dict | None) -> dict | None:
    if not config or config.get("model_type") not in BERT_LIKE:
        return None
    heads = config.get("num_attention_heads") or config.get("n_heads")
    hidden = config.get("hidden_size") or config.get("dim")
    if not heads or not hidden:
        return None
    return {"model_type": config["model_type"], "num_heads": int(heads), "hidden_size": int(hidden)}


# --------------------------------------------------------------------------- TorchScript


def _load_torchscript(source: ModelSource, path: Path) -> LoadedModel:
    import torch

    inputs = _spec_inputs(source)
    if not inputs:
        raise BuildError("InvalidSpec", "model.inputs is required for format torchscript "
                         "(TorchScript carries no input signature)")
    for info in inputs:
        if info.shape[0] != -1:
            log.info("input %s: batch axis declared as %d; treating it as dynamic", info.name, info.shape[0])
    inputs = [TensorInfo(i.name, i.dtype, (-1, *i.shape[1:])) for i in inputs]
    for info in inputs:
        if any(d < 0 for d in info.dims):
            raise BuildError("InvalidSpec", f"model.inputs {info.name}: only the batch axis may "
                             f"be -1 for torchscript, got {list(info.shape)}")
        if info.dtype == "BF16":
            raise BuildError("InvalidSpec", f"model.inputs {info.name}: BF16 inputs are not supported")
    file = _single_file(path, (".pt", ".pth", ".ts", ".torchscript", ".jit"), "TorchScript")
    try:
        module = torch.jit.load(str(file), map_location="cpu").eval()
    except Exception as exc:
        raise wrap("ModelLoadFailed", f"{file.name} is not a loadable TorchScript model: "
                         f"{type(exc).__name__}: {str(exc)[:400]}", exc) from exc

    rng = np.random.default_rng(0)
    sample = [torch.from_numpy(_random_array(i, 2, rng)) for i in inputs]
    try:
        with torch.inference_mode():
            result = module(*sample)
    except Exception as exc:
        raise wrap("ModelLoadFailed", f"{file.name} does not run on inputs shaped like "
                         f"model.inputs: {type(exc).__name__}: {str(exc)[:400]}", exc) from exc
    outputs = _describe_outputs(result)
    return LoadedModel(
        format="torchscript", path=path, inputs=inputs, outputs=outputs,
        baseline_runtime="pytorch-eager-fp32",
        # A second copy for export, so pruning never touches the baseline.
        module=module, export_module=torch.jit.load(str(file), map_location="cpu").eval(),
    )


def _describe_outputs(result: Any) -> list[TensorInfo]:
    import torch

    if isinstance(result, torch.Tensor):
        tensors = {"output": result}
    elif isinstance(result, (tuple, list)):
        tensors = {f"output{i}": t for i, t in enumerate(result)}
    elif isinstance(result, dict):
        tensors = dict(result)
    else:
        raise BuildError("UnsupportedModel", f"model returns {type(result).__name__}; expected a "
                         "tensor, a tuple of tensors or a dict of tensors")
    infos = []
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise BuildError("UnsupportedModel", f"model output {name} is {type(tensor).__name__}, not a tensor")
        dtype = {torch.float32: "FP32", torch.float16: "FP16", torch.int64: "INT64",
                 torch.int32: "INT32", torch.bool: "BOOL", torch.uint8: "UINT8"}.get(tensor.dtype)
        if dtype is None:
            raise BuildError("UnsupportedModel", f"model output {name} has dtype {tensor.dtype}")
        infos.append(TensorInfo(str(name), dtype, (-1, *tensor.shape[1:])))
    return infos


def _random_array(info: TensorInfo, batch: int, rng: np.random.Generator) -> np.ndarray:
    shape = info.concrete(batch)
    dtype = info.numpy_dtype
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        return np.ones(shape, dtype)
    return rng.integers(0, 2, size=shape).astype(dtype)


# --------------------------------------------------------------------------- Hugging Face


def _load_huggingface(source: ModelSource, path: Path) -> LoadedModel:
    if not path.is_dir():
        raise BuildError("ModelLoadFailed", f"format huggingface needs a model directory "
                         f"(config.json + weights + tokenizer), got the file {path.name}")
    if not (path / "config.json").is_file():
        raise BuildError("ModelLoadFailed", f"{path} has no config.json: not a Hugging Face model directory")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(str(path))
    except Exception as exc:
        raise wrap("ModelLoadFailed", f"cannot read {path}/config.json: {exc}", exc) from exc
    if getattr(config, "is_encoder_decoder", False):
        raise BuildError("UnsupportedModel", f"{config.model_type} is an encoder-decoder model; "
                         "the builder handles encoders (embedding / classification backbones)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except Exception as exc:
        raise wrap("ModelLoadFailed", f"cannot load the tokenizer from {path}: {exc}", exc) from exc
    try:
        model = AutoModel.from_pretrained(str(path), dtype=torch.float32).eval()
        export_model = AutoModel.from_pretrained(str(path), dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    except ValueError as exc:
        raise wrap("UnsupportedModel", f"transformers cannot build {path}: {exc}", exc) from exc
    except Exception as exc:
        raise wrap("ModelLoadFailed", f"cannot load the weights in {path}: "
                         f"{type(exc).__name__}: {exc}", exc) from exc

    names = [n for n in tokenizer.model_input_names if n in ("input_ids", "attention_mask", "token_type_ids")]
    if "input_ids" not in names or "attention_mask" not in names:
        raise BuildError("UnsupportedModel", f"tokenizer inputs {tokenizer.model_input_names}: "
                         "need input_ids and attention_mask")
    limit = min(int(getattr(config, "max_position_embeddings", 512) or 512),
                int(tokenizer.model_max_length) if tokenizer.model_max_length < 100_000 else 10**9)
    seq_len = _seq_len_from(_spec_inputs(source), limit)
    pooling, normalize = _sentence_pooling(path)
    inputs = [TensorInfo(n, "INT64", (-1, -1)) for n in names]
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    outputs = [TensorInfo("last_hidden_state", "FP32", (-1, -1, hidden or -1)),
               TensorInfo("sentence_embedding", "FP32", (-1, hidden or -1))]
    return LoadedModel(
        format="huggingface", path=path, inputs=inputs, outputs=outputs,
        baseline_runtime="pytorch-eager-fp32",
        module=SentenceEncoder(model, names, pooling, normalize),
        export_module=SentenceEncoder(export_model, names, pooling, normalize),
        tokenizer=tokenizer, seq_len=seq_len, max_seq_len=limit,
        transformer=_transformer_info(config.to_dict()),
    )


def _sentence_pooling(path: Path) -> tuple[str, bool]:
    """Pooling and normalisation from a sentence-transformers layout; mean, unnormalised otherwise."""
    pooling, normalize = "mean", False
    modules_file = path / "modules.json"
    if not modules_file.is_file():
        return pooling, normalize
    try:
        modules = json.loads(modules_file.read_text())
        for module in modules:
            kind = module.get("type", "")
            if kind.endswith("Normalize"):
                normalize = True
            if kind.endswith("Pooling"):
                cfg = json.loads((path / module.get("path", "") / "config.json").read_text())
                if cfg.get("pooling_mode_cls_token"):
                    pooling = "cls"
                elif cfg.get("pooling_mode_max_tokens"):
                    pooling = "max"
    except (ValueError, OSError, AttributeError) as exc:
        log.warning("ignoring unreadable sentence-transformers config in %s: %s", path, exc)
    return pooling, normalize


@functools.lru_cache(maxsize=1)
def _make_sentence_encoder():
    import torch

    class _SentenceEncoder(torch.nn.Module):
        """An encoder plus sentence pooling; positional inputs in tokenizer order (ONNX export)."""

        def __init__(self, model, input_names: list[str], pooling: str, normalize: bool) -> None:
            super().__init__()
            self.model = model
            self.input_names = list(input_names)
            self.pooling = pooling
            self.normalize = normalize

        def forward(self, *args):
            kwargs = dict(zip(self.input_names, args))
            hidden = self.model(**kwargs).last_hidden_state
            mask = kwargs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            if self.pooling == "cls":
                emb = hidden[:, 0]
            elif self.pooling == "max":
                emb = (hidden - (1.0 - mask) * 1e9).max(dim=1).values
            else:
                emb = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            if self.normalize:
                emb = torch.nn.functional.normalize(emb, p=2.0, dim=1)
            return hidden, emb

    return _SentenceEncoder


def SentenceEncoder(model, input_names: list[str], pooling: str, normalize: bool):  # noqa: N802
    """Build the pooling wrapper (the class is defined lazily so importing this module needs no torch)."""
    return _make_sentence_encoder()(model, input_names, pooling, normalize)
