"""The ``OptimizedModel`` spec: what the user asks for, and everything the API server checks.

These models are the single source of the CRD's schema (``optimodel crd``). Validation that a
user should meet at ``kubectl apply`` time lives here as types, enums, ranges and CEL rules
(``x-kubernetes-validations``) with human messages; the operator and the builder parse the same
models, so a manifest the API server accepted never fails to parse later.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from optimodel.api.base import ApiModel, cel

URI_SCHEMES = ("s3://", "pvc://", "https://", "hf://")
"""Model and calibration sources the builder can fetch. ``file://`` is builder-local only."""

Precision = Literal["auto", "fp32", "fp16", "bf16", "int8", "fp8"]
Target = Literal["auto", "tensorrt", "onnxruntime"]
ModelFormat = Literal["onnx", "torchscript", "huggingface"]
AccuracyMetric = Literal["cosine", "max-abs", "top1-agreement"]
TensorDType = Literal["BOOL", "UINT8", "INT8", "INT32", "INT64", "FP16", "BF16", "FP32"]
AutoscalingEngine = Literal["auto", "hpa", "keda"]
RolloutStrategy = Literal["Surge", "GPUFrugal"]

MAX_BATCH = 4096
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


def nested(factory: type, description: str) -> Any:
    """A sub-object that may be omitted: the API server then stores its full default.

    The schema's ``default`` is the expanded default object (the API server validates defaults,
    CEL rules included, without defaulting inside them), so CEL rules and the operator can rely
    on e.g. ``spec.serving.dynamicBatching`` always existing.
    """
    return Field(default_factory=factory, description=description,
                 json_schema_extra={"default": factory().to_wire()})


URI_MAX_LENGTH = 2048
"""Bounds the cost of the URI rules' regular expressions (CEL cost is estimated from maxLength)."""

URI_FORBIDDEN_CHARACTERS = ";&|$`\\'\"<>(){}"
"""Shell metacharacters a source URI may not contain (with whitespace and control characters).
No URI reaches a shell, but one that looks like a command line is refused at apply time."""

CREDENTIAL_QUERY_PARAMETERS = (
    "X-Amz-Signature", "X-Amz-Credential", "X-Amz-Security-Token", "X-Goog-Signature",
    "X-Goog-Credential", "AWSAccessKeyId", "Signature", "sig", "token", "access_token",
)
"""Query parameters of presigned or token-carrying URLs (matched case-insensitively)."""

# RE2 (CEL ``matches``) patterns; CEL's ``matches`` finds a match anywhere in the string (as
# Python's ``re.search``, which understands URI_DOT_DOT_SEGMENT too: the builder reuses it).
_URI_BAD_CHARACTER = (r"[\s\p{Cc}\p{Cf}\p{Z}"  # whitespace, control, format (bidi) characters
                      + URI_FORBIDDEN_CHARACTERS.replace("\\", "\\\\") + "]")
URI_DOT_DOT_SEGMENT = r"(^|/)(\.|%2[eE]){2}(/|[?#]|$)"
_URI_USERINFO = r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*@"
_URI_CREDENTIAL_QUERY = (r"(?i)[?&](" + "|".join(CREDENTIAL_QUERY_PARAMETERS) + r")=")
_PVC_URI = r"^pvc://[a-z0-9]([-a-z0-9.]*[a-z0-9])?(/|$)"


def _cel_string(value: str) -> str:
    """A CEL single-quoted string literal holding ``value``."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _uri_rules(field: str) -> list[dict[str, str]]:
    """CEL rules of a model or calibration source URI; ``field`` is its path under spec.

    Scheme, well-formedness (no whitespace, control characters or shell metacharacters), no
    ``..`` segments (a pvc:// path may not climb out of its claim, nor any URI out of an allowed
    prefix), no credentials (user:password@ or a presigned / token query string), and the
    ``pvc://<claim>/<path>`` shape. Each message names the field and says what is allowed.
    """
    schemes = ", ".join(URI_SCHEMES)
    return [
        cel(" || ".join(f"self.startsWith('{s}')" for s in URI_SCHEMES),
            f"{field} must start with one of {schemes}"),
        cel(f"!self.matches({_cel_string(_URI_BAD_CHARACTER)})",
            f"{field} must be a well-formed URI: no whitespace, control characters or shell "
            f"metacharacters ({' '.join(URI_FORBIDDEN_CHARACTERS)}); percent-encode them"),
        cel(f"!self.matches({_cel_string(URI_DOT_DOT_SEGMENT)})",
            f"{field} must not contain '..' path segments: a source stays inside its bucket, "
            "claim or allowed prefix"),
        cel(f"!self.matches({_cel_string(_URI_USERINFO)}) && "
            f"!self.matches({_cel_string(_URI_CREDENTIAL_QUERY)})",
            f"{field} must not carry credentials (user:password@host, or a signed or token query "
            f"parameter such as {', '.join(CREDENTIAL_QUERY_PARAMETERS[:2])}, sig= or token=): "
            "put them in a Secret named by spec.model.credentialsSecret"),
        cel(f"!self.startsWith('pvc://') || self.matches({_cel_string(_PVC_URI)})",
            f"{field}: a pvc:// URI is pvc://<claim>/<path>, the claim being the name of a "
            "PersistentVolumeClaim in the model's namespace"),
    ]


class TensorSpec(ApiModel):
    """One model input or output, for formats that do not carry their own signature."""

    name: str = Field(
        min_length=1, max_length=128, pattern=r"^[A-Za-z_][A-Za-z0-9_.:/-]*$",
        description="Tensor name as the model graph calls it (e.g. input_ids).",
    )
    dtype: TensorDType = Field(description="Element type, in Triton's spelling.")
    shape: list[int] = Field(
        min_length=1, max_length=8,
        description="Dimensions including the batch axis first; -1 marks a dynamic dimension.",
        json_schema_extra={"x-kubernetes-validations": [
            cel("self.all(d, d == -1 || d > 0)", "shape dimensions must be positive or -1 (dynamic)"),
        ]},
    )


class ModelSource(ApiModel):
    """Where the trained model lives and how to read it."""

    uri: str = Field(
        min_length=6, max_length=URI_MAX_LENGTH,
        description="Model location: s3://bucket/key, pvc://claim/path, https://host/path or "
        "hf://org/name. No credentials in it (use credentialsSecret).",
        json_schema_extra={"x-kubernetes-validations": _uri_rules("model.uri")},
    )
    format: ModelFormat = Field(
        description="Serialization of the model: onnx, torchscript, or huggingface (encoder directory).",
    )
    credentials_secret: str | None = Field(
        default=None, max_length=253, pattern=DNS_SUBDOMAIN,
        description="Name of a Secret in the same namespace whose keys are exposed to the builder "
        "as environment variables (e.g. AWS_ACCESS_KEY_ID). Credentials never go in the spec.",
    )
    revision: str | None = Field(
        default=None, max_length=128,
        description="Immutable version of the source (object version, commit, etag). Part of the "
        "build key: change it to force a rebuild of an otherwise identical URI.",
    )
    inputs: list[TensorSpec] | None = Field(
        default=None, max_length=32,
        description="Input signature; required for torchscript, read from the model otherwise.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )


class Sparsity(ApiModel):
    """Weight pruning applied to the PyTorch model before export."""

    pattern: Literal["2:4", "unstructured"] = Field(
        description="2:4 = two of every four weights zero (Ampere+ sparse tensor cores); "
        "unstructured = magnitude pruning to `ratio`.",
    )
    ratio: float = Field(
        default=0.5, ge=0.0, le=0.95,
        description="Fraction of weights set to zero for unstructured pruning (2:4 is always 0.5).",
    )


class Calibration(ApiModel):
    """Data used to choose quantization scales for INT8 / FP8."""

    uri: str | None = Field(
        default=None, max_length=URI_MAX_LENGTH,
        description="Calibration samples: .npz or .safetensors tensors keyed by input name, or a "
        "UTF-8 text file (one sample per line) tokenized with the model's tokenizer. Same schemes "
        "and rules as model.uri; read with the model's credentials.",
        json_schema_extra={"x-kubernetes-validations": _uri_rules("optimization.calibration.uri")},
    )
    samples: int = Field(default=512, ge=8, le=65536, description="Number of samples to use.")
    synthetic: bool = Field(
        default=False,
        description="Opt in to random calibration data when no real data exists. Scales chosen "
        "this way are often poor; the build report says so.",
    )


class AccuracyGate(ApiModel):
    """How a compressed candidate is compared with the FP32 reference, and the bar it must clear."""

    metric: AccuracyMetric = Field(
        default="cosine",
        description="cosine = minimum cosine similarity of outputs; max-abs = largest absolute "
        "difference; top1-agreement = fraction of samples whose argmax matches.",
    )
    threshold: float = Field(
        default=0.99, ge=0.0,
        description="Pass mark: at least this for cosine and top1-agreement (0..1), at most this "
        "for max-abs.",
    )

    model_config = ApiModel.model_config | {"json_schema_extra": {"x-kubernetes-validations": [
        cel("self.metric == 'max-abs' || self.threshold <= 1.0",
            "threshold must be within 0..1 for metrics cosine and top1-agreement", ".threshold"),
    ]}}


class Optimization(ApiModel):
    """How to compress and compile the model. Any change here produces a new build key."""

    precision: Precision = Field(
        default="auto",
        description="auto = fastest candidate that passes the accuracy gate; otherwise the one "
        "precision to build (fp32, fp16, bf16, int8, fp8).",
    )
    target: Target = Field(
        default="auto",
        description="Compiler/runtime: tensorrt (GPU engine), onnxruntime, or auto (TensorRT "
        "when the builder has a GPU and the tensorrt package, else ONNX Runtime).",
    )
    max_batch_size: int = Field(
        default=64, ge=1, le=MAX_BATCH,
        description="Largest batch the engine accepts (TensorRT optimization profile maximum).",
    )
    sparsity: Sparsity | None = Field(default=None, description="Optional weight pruning.")
    calibration: Calibration | None = Field(
        default=None, description="Calibration data; required for int8 and fp8.",
    )
    accuracy: AccuracyGate = nested(AccuracyGate, "Accuracy gate every candidate must pass against the FP32 reference.")
    hardware_compatibility: Literal["none", "ampere+", "same-compute-capability"] = Field(
        default="none",
        description="TensorRT hardware compatibility level: trade a little speed for an engine "
        "that loads on other GPU architectures.",
    )

    model_config = ApiModel.model_config | {"json_schema_extra": {"x-kubernetes-validations": [
        cel("!(self.precision in ['int8', 'fp8']) || (has(self.calibration) && "
            "(has(self.calibration.uri) || self.calibration.synthetic))",
            "precision int8 and fp8 need calibration.uri, or calibration.synthetic: true to opt "
            "in to random calibration data", ".calibration"),
        cel("!(has(self.calibration) && !has(self.calibration.uri) && !self.calibration.synthetic)",
            "calibration needs a uri, or synthetic: true", ".calibration"),
        cel("self.precision != 'fp8' || self.target != 'onnxruntime'",
            "precision fp8 needs target tensorrt or auto (ONNX Runtime has no FP8 kernels)",
            ".precision"),
    ]}}


class GPU(ApiModel):
    """GPUs per serving pod and the GPU model they must be."""

    count: int = Field(
        default=1, ge=0, le=8,
        description="nvidia.com/gpu per Triton pod. 0 = serve (and build) on CPU: no GPU is "
        "requested, pods go to the operator's CPU placement, and the engine is an ONNX Runtime one.",
    )
    product: str | None = Field(
        default=None, max_length=63, pattern=r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$",
        description="Value of the nvidia.com/gpu.product node label (e.g. NVIDIA-H100-80GB-HBM3). "
        "The engine is built on this GPU type and served only there. Empty = the operator's "
        "default GPU product.",
    )


class DynamicBatching(ApiModel):
    """Triton dynamic batcher settings."""

    enabled: bool = Field(default=True, description="Let Triton merge concurrent requests.")
    max_queue_delay_microseconds: int = Field(
        default=100, ge=0, le=1_000_000,
        description="How long a request may wait for others to form a batch.",
    )
    preferred_batch_sizes: list[Annotated[int, Field(ge=1, le=MAX_BATCH)]] | None = Field(
        default=None, max_length=16,
        description="Batch sizes the batcher aims for; each at most optimization.maxBatchSize. "
        "Unset: the ones the build measured; [] for none.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )


class Serving(ApiModel):
    """How Triton serves the engine. Changes here never trigger a rebuild."""

    gpu: GPU = nested(GPU, "GPU request and placement.")
    instances_per_gpu: int = Field(
        default=1, ge=1, le=16, description="Triton model instances per GPU (instance_group count).",
    )
    dynamic_batching: DynamicBatching = nested(DynamicBatching, "Server-side request batching.")
    replicas: int = Field(
        default=1, ge=0, le=1000,
        description="Fixed replica count, used only when autoscaling.enabled is false.",
    )
    rollout: RolloutStrategy = Field(
        default="Surge",
        description="Surge = start new pods before old ones stop (maxSurge 1, maxUnavailable 0); "
        "GPUFrugal = never hold extra GPUs (maxSurge 0, maxUnavailable 1).",
    )
    resources: dict[str, str] | None = Field(
        default=None,
        description="Extra CPU/memory requests for the Triton container, e.g. {cpu: '4', memory: 16Gi}.",
        json_schema_extra={"maxProperties": 3, "x-kubernetes-validations": [
            cel("self.all(k, k in ['cpu', 'memory', 'ephemeral-storage'])",
                "resources keys must be cpu, memory or ephemeral-storage"),
        ]},
    )


class Autoscaling(ApiModel):
    """Scale Triton replicas on queue depth (nv_inference_pending_request_count per pod)."""

    enabled: bool = Field(default=True, description="false = fixed serving.replicas.")
    min_replicas: int = Field(default=1, ge=1, le=1000, description="Lower bound of replicas.")
    max_replicas: int = Field(default=4, ge=1, le=1000, description="Upper bound of replicas.")
    target_queue_depth: float = Field(
        default=4, gt=0, le=10_000,
        description="Average pending requests per pod the autoscaler aims for.",
    )
    engine: AutoscalingEngine = Field(
        default="auto",
        description="hpa = HorizontalPodAutoscaler on a prometheus-adapter Pods metric; keda = "
        "KEDA ScaledObject with a Prometheus trigger; auto = keda when its CRD is installed.",
    )
    scale_down_stabilization_seconds: int = Field(
        default=300, ge=0, le=3600,
        description="How long load must stay low before replicas are removed (scale down slowly).",
    )

    model_config = ApiModel.model_config | {"json_schema_extra": {"x-kubernetes-validations": [
        cel("self.minReplicas <= self.maxReplicas",
            "minReplicas must be less than or equal to maxReplicas", ".minReplicas"),
    ]}}


class OptimizedModelSpec(ApiModel):
    """Desired state: a model, how to optimize it, and how to serve and scale it."""

    model: ModelSource = Field(description="The trained model to optimize.")
    optimization: Optimization = nested(Optimization, "Compression, compilation and accuracy gate.")
    serving: Serving = nested(Serving, "Triton serving settings.")
    autoscaling: Autoscaling = nested(Autoscaling, "Queue-depth autoscaling.")

    model_config = ApiModel.model_config | {"json_schema_extra": {"x-kubernetes-validations": [
        cel("!has(self.serving.dynamicBatching.preferredBatchSizes) || "
            "self.serving.dynamicBatching.preferredBatchSizes.all(b, b <= self.optimization.maxBatchSize)",
            "serving.dynamicBatching.preferredBatchSizes must each be at most "
            "optimization.maxBatchSize", ".serving.dynamicBatching.preferredBatchSizes"),
        cel("self.model.format != 'torchscript' || has(self.model.inputs)",
            "model.inputs is required for format torchscript (TorchScript carries no input "
            "signature)", ".model.inputs"),
        cel("self.serving.gpu.count > 0 || !has(self.serving.gpu.product)",
            "serving.gpu.product needs serving.gpu.count of at least 1 (count 0 serves on CPU)",
            ".serving.gpu.product"),
        cel("self.serving.gpu.count > 0 || (self.optimization.target != 'tensorrt' && "
            "self.optimization.precision != 'fp8')",
            "a model served on CPU (serving.gpu.count 0) needs optimization.target onnxruntime or "
            "auto and a precision other than fp8", ".optimization.target"),
    ]}}


class BuildSpec(ApiModel):
    """What the builder receives (``--spec-json``): exactly the inputs of the build key.

    Serving settings are deliberately absent: they are applied to the model repository when a
    Triton pod stages it (``optimodel stage-repository``), so editing them never rebuilds.
    """

    model: ModelSource
    optimization: Optimization = Field(default_factory=Optimization)
    gpu_product: str | None = Field(default=None, description="GPU type the engine targets.")
    builder_image: str | None = Field(
        default=None, description="Image reference (tag or digest) of the builder the operator "
        "runs: a new builder image is a new key, so it never reuses engines older code built.")
    rebuild: str | None = Field(
        default=None, description="The model's optimodel.dev/rebuild annotation: changing it "
        "forces a new build (a new key) of an otherwise unchanged spec.")
