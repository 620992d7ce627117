"""frozenvl.eval: the model-independent parts of few-shot evaluation.

- ``metrics``: CIDEr (pycocoevalcap, PTB tokenizer), VQA accuracy, ROC-AUC, accuracy, Recall@K
- ``records``: readers of the benchmark file formats into :class:`EvalRecord`
- ``tasks``: :class:`TaskSpec` and the registry of benchmarks (prompts, decoding, metric, post-processing)
- ``prompts``: few-shot prompt text and media order; ``demos``: random and RICES demonstrations
- ``postprocess``: generation clean-up; ``results``: results JSON and plots
"""

from frozenvl.eval.demonstrations import RandomDemos, Rices
from frozenvl.eval.metrics import accuracy, cider, exact_match, recall_at_k, roc_auc, vqa_accuracy, vqa_score
from frozenvl.eval.prompts import Prompt, build_few_shot_prompt, build_prompt, demos_for_shots
from frozenvl.eval.records import EvalRecord
from frozenvl.eval.results import EvalResults, plot_metric_vs_shots
from frozenvl.eval.tasks import TASKS, TaskSpec, get_task, register_task
from frozenvl.eval.vqa_normalize import normalize_answer

__all__ = [
    "TASKS", "EvalRecord", "EvalResults", "Prompt", "RandomDemos", "Rices", "TaskSpec", "accuracy",
    "build_few_shot_prompt", "build_prompt", "cider", "demos_for_shots", "exact_match", "get_task",
    "normalize_answer", "plot_metric_vs_shots", "recall_at_k", "register_task", "roc_auc", "vqa_accuracy",
    "vqa_score",
]
