"""SteerLM data preparation: raw OASST / HelpSteer / HelpSteer2 files -> attribute-conditioned SFT records
-> regression reward model rows, byte for byte as NeMo-Aligner's ``examples/nlp/data/steerlm`` scripts write.

Pipeline (scripts in ``examples/nlp/data/steerlm/``, the SteerLM document's commands plus an input flag)::

    preprocess_openassistant_data.py --output_directory=data/oasst --input_file=<oasst trees .jsonl.gz>
    preprocess_helpsteer_data.py --output_directory=data/helpsteer --input_dir=<nvidia/HelpSteer copy>
    preprocess_helpsteer2_data.py --output_directory=... [--only_helpfulness] [-pref] --input_dir=<copy>
        -> train.jsonl / val.jsonl: SFT chat records (``records``), labels ``quality:4,...`` (``attributes``)
    cat oasst/train.jsonl helpsteer/train.jsonl | awk '{for(i=1;i<=4;i++) print}' > merge_train.jsonl
    process_to_regression_format.py --input-file=merge_train.jsonl --output-file=merge_train_reg.jsonl
        -> {"text": <extra_id chat text>, "label": [9 floats, -100.0 = unrated]} (``regression``)

Modules: ``attributes`` (names, order, label strings), ``records`` (the SFT record), ``oasst``,
``helpsteer``, ``regression``, ``io`` (readers / writer), ``inputs`` (which local files a script reads).
"""

from megatron_align.data.steerlm.attributes import (
    HELPSTEER_ATTRIBUTES,
    MISSING,
    OASST_ATTRIBUTES,
    STEERLM_ATTRIBUTES,
    LabelError,
    decode_label,
    encode_label,
    label_vector,
)
from megatron_align.data.steerlm.helpsteer import (
    preprocess_helpsteer,
    preprocess_helpsteer2,
    preprocess_helpsteer2_preference,
)
from megatron_align.data.steerlm.oasst import preprocess_oasst
from megatron_align.data.steerlm.records import SYSTEM_PROMPT
from megatron_align.data.steerlm.regression import convert_file, regression_rows, regression_text

__all__ = [
    "HELPSTEER_ATTRIBUTES",
    "MISSING",
    "OASST_ATTRIBUTES",
    "STEERLM_ATTRIBUTES",
    "SYSTEM_PROMPT",
    "LabelError",
    "convert_file",
    "decode_label",
    "encode_label",
    "label_vector",
    "preprocess_helpsteer",
    "preprocess_helpsteer2",
    "preprocess_helpsteer2_preference",
    "preprocess_oasst",
    "regression_rows",
    "regression_text",
]
