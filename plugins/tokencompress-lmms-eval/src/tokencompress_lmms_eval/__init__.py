"""A ``tokencompress`` model for lmms-eval: any pipeline on any lmms-eval video task, no fork.

Importing this package imports neither lmms-eval nor torch: lmms-eval loads
:mod:`.manifest` through its ``lmms_eval.models`` entry point, and only the manifest's class
path, :class:`tokencompress_lmms_eval.model.TokencompressLMM`, pulls in the heavy parts when a
run asks for ``--model tokencompress``.
"""

MODEL_ID = "tokencompress"
MODEL_CLASS_PATH = "tokencompress_lmms_eval.model.TokencompressLMM"
# The lmms-eval release line whose request tuples and registry this plugin was written against.
TESTED_LMMS_EVAL = "0.7"
INSTALL_HINT = (
    'pip install --no-deps "lmms-eval==0.7.3" && pip install -e "plugins/tokencompress-lmms-eval[lmms-eval]" '
    "(plugins/tokencompress-lmms-eval/README.md)"
)

__version__ = "0.1.0"
__all__ = ["INSTALL_HINT", "MODEL_CLASS_PATH", "MODEL_ID", "TESTED_LMMS_EVAL", "__version__"]
