"""The MLflow pyfunc wrapper of a model artifact, logged as "model from code".

MLflow stores this file's source with every version and executes it on load, instead of
unpickling a Python object: nothing is ever unpickled from the registry. The model
artifact directory travels as the pyfunc artifact ``model_dir``; weights load from
safetensors only. ``predict`` takes a list of prompts and returns greedy continuations,
so ``mlflow.pyfunc.load_model("models:/sovereign-lm@champion").predict([...])`` works
offline; servers that want the raw Hugging Face directory use
``registry.versions.download_model_dir`` instead.

Self-contained on purpose: the loading host needs mlflow, torch and transformers, not
this project.
"""

from __future__ import annotations

import mlflow
from mlflow.pyfunc import PythonModel

MODEL_DIR_ARTIFACT = "model_dir"


class SovereignLM(PythonModel):
    # predict has no type hints (see below), so MLflow has nothing to validate from them;
    # this MLflow attribute skips that check, which otherwise advises adding hints, in
    # colour, on every load of a version
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = context.artifacts[MODEL_DIR_ARTIFACT]
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, use_safetensors=True, dtype=torch.float32
        ).eval()

    # No type hints on predict: MLflow would infer the signature from them and drop the
    # declared ``max_new_tokens`` param. Input arrives as a list or a one-column DataFrame.
    def predict(self, context, model_input, params=None):
        import torch

        if hasattr(model_input, "iloc"):
            model_input = [str(v) for v in model_input.iloc[:, 0]]

        max_new_tokens = int((params or {}).get("max_new_tokens", 32))
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        outputs = []
        with torch.inference_mode():
            for prompt in model_input:
                ids = tok(prompt, return_tensors="pt")
                out = self.model.generate(
                    **ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad
                )
                new = out[0, ids["input_ids"].shape[1] :]
                outputs.append(tok.decode(new, skip_special_tokens=True))
        return outputs


mlflow.models.set_model(SovereignLM())
