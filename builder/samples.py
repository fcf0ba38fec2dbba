"""Sample data: the three disjoint sets a build uses, and calibration inputs for static INT8/FP8.

Rules the report depends on:
- Three sets that never overlap: **calibration** (fits INT8/FP8 scales), **selection** (the gate
  every candidate must pass, and the tie-break among them) and **report** (measured once, on the
  selected engine only: the accuracy the report and the status publish). Picking the best of
  several INT8 variants on the same samples it then reports would make that number optimistic.
- With user data (``calibration.uri``) all three come from it: the last fifth (at most 64) is the
  report set, the fifth before it the selection set, the rest calibrates. Without it, text models
  use two disjoint built-in sentence sets (selection, report), and tensor models seeded random
  inputs from two different seeds; the built-in calibration sentences and seeds are a third.
- Synthetic calibration data is used only when the spec opts in (``calibration.synthetic``), and
  the report then says so (``calibrationSource: synthetic`` plus a warning). For text models the
  synthetic set is the built-in generic sentences (real language, but not the user's data); for
  tensor models it is seeded random normal data.
- Calibration tensors must match the model signature; a mismatch is ``CalibrationFailed`` naming
  the input and the expected vs actual shape.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from optimodel.builder.errors import BuildError
from optimodel.builder.loader import LoadedModel
from optimodel.builder.sources import fetch
from optimodel.builder.tensors import TensorInfo

log = logging.getLogger("optimodel.builder")

Feeds = dict[str, np.ndarray]

HELD_OUT_SENTENCES = (
    "The quarterly report shows revenue grew by twelve percent compared with last year.",
    "Can you recommend a good Italian restaurant near the train station?",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "My flight was delayed by three hours because of a storm over Chicago.",
    "The defendant pleaded not guilty to all charges on Tuesday morning.",
    "Add two cups of flour and stir until the batter is smooth.",
    "She finally finished her doctoral thesis on medieval Portuguese poetry.",
    "How do I reset my password if I no longer have access to my email?",
    "The new graphics card doubles the frame rate in most modern games.",
    "A gentle breeze carried the scent of pine trees across the lake.",
    "Interest rates are expected to remain unchanged until the end of the year.",
    "The kids built a sandcastle and watched the tide wash it away.",
    "Kubernetes schedules pods onto nodes that have enough free resources.",
    "He apologized for the misunderstanding and offered to pay for the damage.",
    "The museum's new exhibition features sculptures from ancient Greece.",
    "Drinking enough water helps your body regulate its temperature.",
    "Our team lost the final match in a penalty shootout.",
    "Please send me the signed contract by Friday afternoon.",
    "The volcano erupted, covering nearby villages in a thick layer of ash.",
    "This laptop's battery lasts about ten hours on a single charge.",
    "Migrating birds navigate using the Earth's magnetic field.",
    "I left my umbrella on the bus this morning.",
    "The committee approved the budget after a long and heated debate.",
    "Quantum computers may one day break today's public-key encryption.",
    "The cat knocked a glass of water off the kitchen table.",
    "Symptoms of the flu include fever, cough, and muscle aches.",
    "Our startup is hiring backend engineers with experience in distributed systems.",
    "The orchestra performed Beethoven's Ninth Symphony to a sold-out audience.",
    "Traffic on the highway was backed up for miles after the accident.",
    "She planted tomatoes, basil, and peppers in her small backyard garden.",
    "Why does the sky look blue during the day but red at sunset?",
    "The software update fixed several security vulnerabilities in the browser.",
)
"""Default selection set for text models: varied topics, lengths and registers."""

REPORT_SENTENCES = (
    "The museum reopened after a two-year renovation of its east wing.",
    "Why does my laptop battery drain so quickly when the screen is off?",
    "Volcanic ash grounded hundreds of flights across northern Europe.",
    "Preheat the oven to two hundred degrees and grease a round tin.",
    "The committee postponed its vote until the budget figures are audited.",
    "Our team lost the final in extra time after a disputed penalty.",
    "Mitochondria produce most of the energy a cell needs to function.",
    "I would like to change my appointment from Monday to Thursday afternoon.",
    "The novel follows three sisters who inherit a failing vineyard.",
    "Interest rates were left unchanged for the fourth consecutive month.",
    "Wear a helmet and reflective clothing when cycling after dark.",
    "The startup raised forty million dollars to expand into Asian markets.",
    "Is it safe to drink tap water when travelling in that region?",
    "Glaciers in the Alps have lost a third of their volume since 1980.",
    "The orchestra will perform Mahler's second symphony on Saturday night.",
    "Restart the router, then wait two minutes before reconnecting.",
    "A rare comet will be visible to the naked eye early next week.",
    "The landlord agreed to repair the heating before the end of the month.",
    "Children under twelve must be accompanied by an adult at all times.",
    "Researchers trained the model on anonymised hospital records.",
    "Thank you for your patience while we investigate the billing error.",
    "The ferry to the island leaves every hour between six and ten.",
    "Her debut album mixes traditional folk melodies with electronic beats.",
    "Unemployment fell slightly as the construction sector hired more workers.",
    "Could you send me the slides from this morning's presentation?",
    "The ancient city was buried under volcanic ash for nearly two thousand years.",
    "Store the vaccine between two and eight degrees Celsius.",
    "The striker signed a three-year contract with the league champions.",
    "Migrating birds use the earth's magnetic field to find their way.",
    "Please remove your shoes before entering the prayer hall.",
    "The council approved plans for a solar farm on the old airfield.",
    "What time does the pharmacy on the corner close on Sundays?",
)
"""Default report set for text models: disjoint from the selection and calibration sentences."""

CALIBRATION_SENTENCES = (
    "The weather forecast predicts light rain for most of the weekend.",
    "Customers can return unused items within thirty days of purchase.",
    "The library extended its opening hours during the exam period.",
    "A new bridge will connect the two halves of the city by next spring.",
    "He practices the piano for an hour every evening after dinner.",
    "The central bank raised its benchmark interest rate by a quarter point.",
    "Our hotel room had a beautiful view of the mountains.",
    "Machine learning models need large amounts of labelled data.",
    "The recipe calls for fresh lemons, garlic, and olive oil.",
    "The spacecraft entered orbit around Mars after a seven-month journey.",
    "Remember to back up your files before installing the update.",
    "The children's choir sang carols in the town square.",
    "Several species of frogs are threatened by habitat loss.",
    "The meeting has been moved to the third floor conference room.",
    "She ran her first marathon in just under four hours.",
    "The detective found a crucial clue hidden under the floorboards.",
    "Solar panels on the roof now supply most of the building's electricity.",
    "What time does the pharmacy close on Sundays?",
    "The novel follows three generations of a family in rural Ireland.",
    "Investors reacted nervously to the unexpected earnings warning.",
    "The puppy chewed through the cable of my headphones.",
    "Public transport is free for students under the age of eighteen.",
    "The surgeon explained the risks of the operation in detail.",
    "A sudden power outage left the whole neighbourhood in darkness.",
    "The database query returned more rows than we expected.",
    "They hiked to the summit and watched the sunrise over the valley.",
    "The city council voted to ban cars from the historic centre.",
    "Fresh bread from the bakery around the corner is the best breakfast.",
    "The antivirus program flagged the attachment as suspicious.",
    "Our grandparents told stories about growing up on a farm.",
    "The tennis champion announced her retirement after twenty years.",
    "Please keep your seatbelt fastened while the sign is illuminated.",
)
"""Built-in text calibration set (used only with ``calibration.synthetic``); disjoint from the selection
and report sentences."""

MAX_HELD_OUT = 64  # per evaluation set drawn from user data
SELECTION_SEED, REPORT_SEED, CALIBRATION_SEED = 1234, 4321, 99  # seeded random inputs, one per set


@dataclass
class SampleSet:
    feeds: Feeds
    source: str  # "builtin-sentences", "uri", "synthetic"

    @property
    def count(self) -> int:
        return len(next(iter(self.feeds.values())))

    @property
    def token_mask(self) -> np.ndarray | None:
        """Which token positions are real (text models' ``attention_mask``), for the gate."""
        return self.feeds.get("attention_mask")

    def batch(self, size: int, offset: int = 0) -> Feeds:
        """``size`` samples starting at ``offset``, cycling when there are fewer."""
        idx = (np.arange(size) + offset) % self.count
        return {k: v[idx] for k, v in self.feeds.items()}

    def head(self, n: int) -> "SampleSet":
        return SampleSet({k: v[:n] for k, v in self.feeds.items()}, self.source)

    def at_length(self, length: int) -> "SampleSet":
        """The samples cut or zero-padded to ``length`` tokens (axis 1 of every ``[N, T, ...]``
        feed), for timing a text engine at another sequence length. Zero is BERT's [PAD] id and
        a masked-out position; the answers are not checked, only the speed."""
        def resize(v: np.ndarray) -> np.ndarray:
            if v.ndim < 2 or v.shape[1] == length:
                return v
            if v.shape[1] > length:
                return np.ascontiguousarray(v[:, :length])
            pad = [(0, 0), (0, length - v.shape[1])] + [(0, 0)] * (v.ndim - 2)
            return np.pad(v, pad)
        return SampleSet({k: resize(v) for k, v in self.feeds.items()}, self.source)


def tokenize(model: LoadedModel, sentences: list[str] | tuple[str, ...]) -> Feeds:
    """Sentences -> model inputs, padded to the benchmark sequence length (as served)."""
    enc = model.tokenizer(list(sentences), padding="max_length", truncation=True,
                          max_length=model.seq_len, return_tensors="np")
    feeds = {}
    for info in model.inputs:
        if info.name in enc:
            feeds[info.name] = np.asarray(enc[info.name]).astype(info.numpy_dtype)
        elif info.name == "token_type_ids":
            feeds[info.name] = np.zeros_like(enc["input_ids"], dtype=info.numpy_dtype)
        else:
            raise BuildError("UnsupportedModel", f"the tokenizer produces no {info.name}")
    return feeds


def synthetic(inputs: list[TensorInfo], n: int, seed: int, seq_len: int | None = None) -> Feeds:
    """Seeded random inputs that respect each input's dtype and role."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for info in inputs:
        shape = info.concrete(n, seq_len)
        dtype = info.numpy_dtype
        lname = info.name.lower()
        if dtype.kind == "f":
            feeds[info.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b" or "mask" in lname:
            feeds[info.name] = np.ones(shape, dtype)
        elif "type" in lname or "position" in lname:
            feeds[info.name] = np.zeros(shape, dtype)
        else:
            feeds[info.name] = rng.integers(0, 100, size=shape).astype(dtype)
    return feeds


def split_sizes(n: int) -> tuple[int, int, int]:
    """Calibration, selection and report sizes for ``n`` user samples: the last fifth (1..64) is
    reported on, the fifth before it selects, the rest calibrates."""
    k = max(1, min(MAX_HELD_OUT, n // 5))
    if n - 2 * k < 1:
        raise BuildError("CalibrationFailed", f"calibration data has {n} sample(s): need at least 3 "
                         "(calibration, selection and report sets never share a sample)")
    return n - 2 * k, k, k


@dataclass(frozen=True)
class EvaluationSets:
    """The disjoint sets of one build (see the module docstring)."""

    calibration: Feeds | None  # what static INT8/FP8 and SmoothQuant calibrate on; None: no data
    selection: SampleSet
    report: SampleSet
    warnings: tuple[str, ...] = ()


def evaluation_sets(model: LoadedModel, calibration: Feeds | None, from_user: bool,
                    quick: bool) -> EvaluationSets:
    """Split user data three ways, or pair built-in evaluation sets with the given calibration."""
    if from_user and calibration is not None:
        n = len(next(iter(calibration.values())))
        cal, sel, _ = split_sizes(n)
        part = lambda lo, hi: {name: v[lo:hi] for name, v in calibration.items()}  # noqa: E731
        warnings = () if sel >= 16 else (
            f"calibration.uri holds {n} samples: the accuracy gate and the reported accuracy each rest "
            f"on only {sel} of them; give at least 80 samples for 16 per set",)
        return EvaluationSets(part(0, cal), SampleSet(part(cal, cal + sel), "uri"),
                              SampleSet(part(cal + sel, n), "uri"), warnings)
    if model.is_text:
        # Never fewer sentences in --quick mode: it saves benchmark time, not accuracy evidence
        # (a smaller set makes a thin pass of the gate more likely to be luck).
        return EvaluationSets(calibration, SampleSet(tokenize(model, HELD_OUT_SENTENCES), "builtin-sentences"),
                              SampleSet(tokenize(model, REPORT_SENTENCES), "builtin-sentences"))
    count = 16 if quick else MAX_HELD_OUT
    return EvaluationSets(
        calibration, SampleSet(synthetic(model.inputs, count, seed=SELECTION_SEED), "synthetic"),
        SampleSet(synthetic(model.inputs, count, seed=REPORT_SEED), "synthetic"),
        ("accuracy verified on seeded random inputs: give calibration.uri with real samples to verify "
         "on real data",))


def load_calibration(uri: str, dest: Path, model: LoadedModel, samples: int) -> Feeds:
    """Read calibration data from a URI (.npz / .safetensors tensors, or text one sample per line)."""
    path = fetch(uri, dest, what="calibration data", missing="CalibrationFailed")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".npz", ".safetensors", ".txt"))
        if len(files) != 1:
            raise BuildError("CalibrationFailed", f"calibration directory {uri} holds {len(files)} "
                             ".npz/.safetensors/.txt files; point calibration.uri at one")
        path = files[0]
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                tensors = {k: np.asarray(data[k]) for k in data.files}
        elif suffix == ".safetensors":
            from safetensors.numpy import load_file

            tensors = load_file(str(path))
        else:
            if not model.is_text:
                raise BuildError("CalibrationFailed", f"calibration file {path.name} is text, but the "
                                 "model has no tokenizer: give .npz or .safetensors tensors keyed by "
                                 f"input name ({', '.join(i.name for i in model.inputs)})")
            lines = [s.strip() for s in path.read_text(encoding="utf-8").splitlines() if s.strip()]
            if not lines:
                raise BuildError("CalibrationFailed", f"calibration file {path.name} has no text lines")
            return tokenize(model, lines[:samples])
    except BuildError:
        raise
    except Exception as exc:
        raise BuildError("CalibrationFailed", f"cannot read calibration data {path.name}: "
                         f"{type(exc).__name__}: {exc}") from exc
    return validate_tensors(tensors, model, samples, path.name)


def validate_tensors(tensors: dict[str, np.ndarray], model: LoadedModel, samples: int, origin: str) -> Feeds:
    """Check calibration tensors against the signature; name the input and both shapes on error."""
    feeds: Feeds = {}
    batch = None
    for info in model.inputs:
        if info.name not in tensors:
            raise BuildError("CalibrationFailed", f"{origin} has no tensor for input {info.name} "
                             f"(it has {sorted(tensors)}); key tensors by input name")
        arr = tensors[info.name]
        expected = ["N" if i == 0 else ("*" if d < 0 else d) for i, d in enumerate(info.shape)]
        fixed_ok = all(d < 0 or a == d for d, a in zip(info.shape[1:], arr.shape[1:]))
        if arr.ndim != len(info.shape) or not fixed_ok:
            raise BuildError("CalibrationFailed", f"calibration tensor for input {info.name} has shape "
                             f"{list(arr.shape)}, expected [{', '.join(map(str, expected))}] "
                             "(N = number of samples)")
        if batch is not None and arr.shape[0] != batch:
            raise BuildError("CalibrationFailed", f"calibration tensor for input {info.name} has "
                             f"{arr.shape[0]} samples, other inputs have {batch}")
        batch = arr.shape[0]
        if arr.dtype.kind != info.numpy_dtype.kind and not (arr.dtype.kind in "iu" and info.numpy_dtype.kind in "iu"):
            raise BuildError("CalibrationFailed", f"calibration tensor for input {info.name} has dtype "
                             f"{arr.dtype}, expected {info.numpy_dtype}")
        feeds[info.name] = np.ascontiguousarray(arr.astype(info.numpy_dtype))
    if not batch:
        raise BuildError("CalibrationFailed", f"{origin} holds no samples")
    return {k: v[:samples] for k, v in feeds.items()}


def synthetic_calibration(model: LoadedModel, samples: int) -> Feeds:
    if model.is_text:
        return tokenize(model, CALIBRATION_SENTENCES)
    return synthetic(model.inputs, min(samples, 128), seed=CALIBRATION_SEED)
