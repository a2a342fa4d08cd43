"""Checks a model folder passes before anything heavy is built from it.

Loading a folder whose files do not belong together fails late and badly: a missing
``config.json`` makes transformers fall back to a default configuration (a 72B model, which grows
the process without bound while it is built), a truncated weight file fails deep inside safetensors.
These checks read only small files and the headers of the weight files (a safetensors file opens
with an 8-byte length and a JSON table of every tensor's dtype, shape and byte range), and build
the model the configuration describes on PyTorch's ``meta`` device (shapes, no memory). Each
refusal is a ``ModelFolderError``: one line naming the file.

- ``safetensors_header(path)``: the file parses and is not truncated (every tensor's bytes lie
  inside the file and match its dtype and shape);
- ``check_mllm_folder(folder)``: ``config.json`` (a configuration of a supported backbone: Qwen2.5-VL
  or Qwen3-VL; any other architecture is refused naming the supported ones), the tokenizer and
  processor files, and weights holding every tensor the configuration implies, at its shape;
- ``check_sam_folder(folder)``: a transformers SAM 2.1 folder, the same way;
- ``check_model_folder(folder)``: a seganswer folder: its ``mllm/``, SAM 2.1 and projector files.

The memory guard: the parameters the configuration implies are counted on the meta model, and a
configuration that implies more than the folder's weight files hold is refused before any real
tensor is allocated (``check_fits``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from seganswer_cli.errors import ModelFolderError, read_json

#: Bytes per element of the dtypes a safetensors header names.
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
               "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8}
#: The largest header safetensors itself accepts (100 MB).
MAX_HEADER_BYTES = 100_000_000
#: Weight files of a transformers folder, in the order they are looked for.
SAFETENSORS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
TORCH_BIN, TORCH_BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
WEIGHT_FILES = (SAFETENSORS, SAFETENSORS_INDEX, TORCH_BIN, TORCH_BIN_INDEX)
#: The smallest bytes per parameter of the weights we load (bf16/fp16): what a ``.bin`` file of
#: ``n`` bytes can hold at most is ``n / 2`` parameters.
MIN_BYTES_PER_PARAMETER = 2


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a weight file, as its header describes it."""

    file: Path
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def safetensors_header(path: Path) -> dict[str, TensorEntry]:
    """The tensors of the safetensors file ``path`` by name, from its header alone; a file that is
    unreadable, not safetensors, or truncated is refused naming it."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n < 2 or n > MAX_HEADER_BYTES or 8 + n > size:
                raise ModelFolderError(f"{path} is truncated or not a safetensors file ({size:,} bytes)")
            raw = f.read(n)
    except OSError as e:
        raise ModelFolderError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelFolderError(f"{path} is not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise ModelFolderError(f"{path} is not a safetensors file (its header is not a table of tensors)")
    data_bytes = size - 8 - n
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = entry["dtype"], tuple(int(d) for d in entry["shape"]), entry["data_offsets"]
            itemsize = DTYPE_BYTES[dtype]
        except (KeyError, TypeError, ValueError):
            raise ModelFolderError(f"{path} is not a safetensors file (bad header entry for {name})") from None
        if end > data_bytes:
            raise ModelFolderError(
                f"{path} is truncated: {name} needs bytes up to {8 + n + end:,} of a {size:,}-byte file"
            )
        if not 0 <= begin <= end or end - begin != math.prod(shape) * itemsize:
            raise ModelFolderError(f"{path} is corrupt: {name}'s byte range does not match its shape {list(shape)}")
        tensors[name] = TensorEntry(path, dtype, shape)
    return tensors


def weight_entries(folder: Path) -> dict[str, TensorEntry] | None:
    """Every tensor of a transformers folder's safetensors weights (one file or an index of shards);
    None when the folder's weights are PyTorch pickles (no header to read)."""
    single, index = folder / SAFETENSORS, folder / SAFETENSORS_INDEX
    if single.is_file():
        return safetensors_header(single)
    if not index.is_file():
        return None
    index_data = read_json(index, ModelFolderError)
    weight_map = index_data.get("weight_map") if isinstance(index_data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModelFolderError(f"{index} has no weight_map")
    tensors: dict[str, TensorEntry] = {}
    for shard in sorted(set(weight_map.values())):
        path = folder / shard
        if not path.is_file():
            raise ModelFolderError(f"{index} lists {shard}, which is missing from {folder}")
        tensors.update(safetensors_header(path))
    for name, shard in weight_map.items():
        if name not in tensors:
            raise ModelFolderError(f"{index} places {name} in {shard}, which does not hold it")
    return tensors


def bin_bytes(folder: Path) -> int:
    """Bytes of a folder's PyTorch pickle weights (``pytorch_model*.bin``)."""
    return sum(p.stat().st_size for p in folder.glob("pytorch_model*.bin"))


def require_weights(folder: Path) -> None:
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise ModelFolderError(f"{folder}: no weights (expected one of {', '.join(WEIGHT_FILES)})")


def check_fits(expected: dict[str, tuple[int, ...]], folder: Path, found: dict[str, TensorEntry] | None,
               config_path: Path) -> None:
    """The memory guard: refuse a configuration that implies more parameters than the weight files
    hold (a wrong or default configuration would otherwise allocate a model the files cannot fill)."""
    need = sum(math.prod(s) for s in expected.values())
    if found is not None:
        have, files = sum(t.numel for t in found.values()), "its weight files hold"
    else:
        have, files = bin_bytes(folder) // MIN_BYTES_PER_PARAMETER, "its weight files can hold at most"
    if need > have:
        raise ModelFolderError(
            f"{config_path} describes {need:,} parameters but {files} {have:,}: the configuration does not "
            "belong to these weights (nothing was built)"
        )


def check_shapes(expected: dict[str, tuple[int, ...]], found: dict[str, TensorEntry], config_path: Path, *,
                 normalise=lambda name: name, required: tuple[str, ...] | None = None) -> None:
    """Each tensor the configuration implies has its shape in the weight files; a tensor it implies
    that the files lack is refused when ``required`` is None (all are) or names it."""
    by_name = {normalise(name): entry for name, entry in found.items()}
    for name, shape in expected.items():
        entry = by_name.get(normalise(name))
        if entry is None:
            if required is None or normalise(name) in required:
                raise ModelFolderError(f"the weights of {config_path.parent} have no {name} (shape {list(shape)}), "
                                       f"which {config_path.name} implies")
            continue
        if entry.shape != tuple(shape):
            raise ModelFolderError(f"{entry.file}: {name} has shape {list(entry.shape)} but {config_path} implies "
                                   f"{list(shape)}")


def _config_data(path: Path) -> dict:
    """The JSON object in the configuration file ``path``."""
    if not path.is_file():
        raise ModelFolderError(f"{path.parent}: no {path.name} (not a transformers model folder)")
    data = read_json(path, ModelFolderError)
    if not isinstance(data, dict):
        raise ModelFolderError(f"{path} is not a model configuration")
    return data


def _config(path: Path, cls, model_types: tuple[str, ...]):
    """``cls`` (a transformers config class) from the JSON file ``path``, which must parse and name one of ``model_types``."""
    data = _config_data(path)
    if data.get("model_type") not in model_types:
        raise ModelFolderError(f"{path} describes a {data.get('model_type')!r} model, not {' or '.join(model_types)}")
    from huggingface_hub.errors import StrictDataclassError

    try:
        return cls.from_dict(data)
    except (TypeError, ValueError, KeyError, StrictDataclassError) as e:
        cause = e.__cause__ or e  # huggingface_hub's validation error wraps the reason
        raise ModelFolderError(f"{path}: not a valid configuration: {' '.join(str(cause).split())[:300]}") from None


def meta_shapes(build, *, persistent_buffers: bool = False) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of the module ``build()`` makes, built on the meta device (no memory).
    Tied parameters count once; ``persistent_buffers`` adds what ``state_dict`` holds beside them."""
    import torch

    with torch.device("meta"):
        module = build()
    shapes = {name: tuple(p.shape) for name, p in module.named_parameters()}
    if persistent_buffers:
        shapes = {name: tuple(t.shape) for name, t in module.state_dict().items()}
    return shapes


# -- the MLLM -------------------------------------------------------------------------------------


def mllm_key(name: str) -> str:
    """One name for an MLLM weight across checkpoint layouts: the published files say
    ``model.layers.0...`` and ``visual...``, transformers' module ``model.language_model.layers.0...``
    and ``model.visual...``.

    >>> mllm_key("model.language_model.layers.0.mlp.up_proj.weight"), mllm_key("model.visual.merger.ln_q.weight")
    ('layers.0.mlp.up_proj.weight', 'visual.merger.ln_q.weight')
    """
    name = name.removeprefix("model.")
    return name.removeprefix("language_model.")


#: Tokenizer files: ``tokenizer.json``, or the BPE vocabulary and merges it is built from.
TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"))
#: The image processor's settings: the published ``preprocessor_config.json`` or transformers' ``processor_config.json``.
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


def check_mllm_folder(folder: Path):
    """An MLLM folder of a supported backbone that can load (see the module docstring); returns its
    configuration."""
    from seganswer_cli.model.backbones import backbone_for

    folder = Path(folder)
    config_path = folder / "config.json"
    backbone = backbone_for(_config_data(config_path).get("model_type"), config_path)
    model_class, config_class = backbone.classes()
    config = _config(config_path, config_class, (backbone.model_type,))
    if not any(all((folder / f).is_file() for f in files) for files in TOKENIZER_FILES):
        raise ModelFolderError(f"{folder}: no tokenizer (tokenizer.json, or vocab.json and merges.txt)")
    if not any((folder / f).is_file() for f in PROCESSOR_FILES):
        raise ModelFolderError(f"{folder}: no image processor settings ({' or '.join(PROCESSOR_FILES)})")
    for name in ("tokenizer_config.json", *PROCESSOR_FILES, "generation_config.json", "chat_template.json"):
        if (folder / name).is_file():
            read_json(folder / name, ModelFolderError)
    require_weights(folder)
    found = weight_entries(folder)
    expected = meta_shapes(lambda: model_class._from_config(config))
    check_fits(expected, folder, found, config_path)
    if found is not None:
        check_shapes(expected, found, config_path, normalise=mllm_key)
    return config


# -- SAM 2.1 --------------------------------------------------------------------------------------

#: SAM 2.1 weights a folder must hold whatever else it holds: the image encoder's first layer and
#: the mask decoder's output tokens (the rest is checked where present, and loaded strictly in a
#: seganswer folder).
SAM_KEY_TENSORS = ("vision_encoder.backbone.patch_embed.projection.weight", "mask_decoder.iou_token.weight")


def sam_config_from(path: Path):
    """The ``Sam2Config`` in ``path`` (a transformers folder's ``config.json`` or a seganswer
    folder's ``mask_decoder_config.json``; the published files name the video model)."""
    from transformers import Sam2Config

    return _config(path, Sam2Config, ("sam2", "sam2_video"))


def check_sam_weights(config, weights: dict[str, TensorEntry], config_path: Path) -> None:
    from transformers import Sam2Model

    expected = meta_shapes(lambda: Sam2Model(config), persistent_buffers=True)
    check_fits(expected, config_path.parent, weights, config_path)
    check_shapes(expected, weights, config_path, required=SAM_KEY_TENSORS)


def check_sam_folder(folder: Path) -> None:
    """A transformers SAM 2.1 folder (``config.json`` + safetensors weights) that can load."""
    folder = Path(folder)
    config = sam_config_from(folder / "config.json")
    require_weights(folder)
    found = weight_entries(folder)
    if found is not None:
        check_sam_weights(config, found, folder / "config.json")


# -- a seganswer folder ---------------------------------------------------------------------------


def check_model_folder(folder: Path):
    """A seganswer folder's parts (``mllm/``, ``mask_decoder*``, ``projector.safetensors``) can load,
    and fit each other: the projector maps the MLLM's hidden size to SAM's prompt dimension. Returns
    the MLLM's configuration."""
    folder = Path(folder)
    mllm_config = check_mllm_folder(folder / "mllm")
    hidden = mllm_config.text_config.hidden_size
    sam_config_path = folder / "mask_decoder_config.json"
    sam_config = sam_config_from(sam_config_path)
    check_sam_weights(sam_config, safetensors_header(folder / "mask_decoder.safetensors"), sam_config_path)
    projector = safetensors_header(folder / "projector.safetensors")
    prompt_dim = sam_config.mask_decoder_config.hidden_size
    fc1, fc2 = projector.get("fc1.weight"), projector.get("fc2.weight")
    if fc1 is None or fc2 is None:
        raise ModelFolderError(f"{folder / 'projector.safetensors'} has no fc1.weight / fc2.weight (not a seganswer projector)")
    if fc1.shape[1] != hidden or fc2.shape[0] != prompt_dim:
        raise ModelFolderError(
            f"{folder / 'projector.safetensors'} maps {fc1.shape[1]} -> {fc2.shape[0]} but the model needs "
            f"{hidden} -> {prompt_dim} (mllm/config.json's hidden size -> {sam_config_path.name}'s prompt size)"
        )
    return mllm_config
