"""Worker: transformers' `generate` (use_cache, greedy) on PyTorch or optimum's ORTModelForCausalLM.

    --engine transformers   AutoModelForCausalLM from a transformers folder (transformers venv)
    --engine optimum        ORTModelForCausalLM from an optimum ONNX export (optimum venv)

min_new_tokens = max_new_tokens, so EOS cannot end a row early.
"""

import protocol  # first: it moves stdout out of the protocol's way

DISTS = ("torch", "transformers", "optimum", "optimum-onnx", "onnxruntime", "numpy")


def load(args):
    import time

    import torch

    torch.set_num_threads(args.threads)  # the model's ops, or generate's own ops (optimum)
    if args.engine == "transformers":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    else:
        import onnxruntime as ort
        from optimum.onnxruntime import ORTModelForCausalLM

        options = ort.SessionOptions()  # as tinygen sets its own
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = args.threads
        model = ORTModelForCausalLM.from_pretrained(args.model, use_cache=True,
                                                    session_options=options,
                                                    provider="CPUExecutionProvider")
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(args.model)  # as an application would: cold starts compare alike
    eos = model.generation_config.eos_token_id
    pad = eos[0] if isinstance(eos, list) else eos

    class Clock:
        """A streamer that only notes the time: generate passes it the prompt, then each token."""

        def __init__(self, ready):
            self.ready, self.calls = ready, 0

        def put(self, value):
            self.calls += 1
            if self.calls > 1:
                self.ready.append(time.perf_counter())

        def end(self):
            pass

    def generate(prompt, batch, new_tokens, ready):
        ids = torch.tensor([prompt] * batch, dtype=torch.long)
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 num_beams=1, use_cache=True, max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, pad_token_id=pad, top_k=None,
                                 top_p=None, temperature=None, streamer=Clock(ready))
        return out[:, len(prompt):].tolist()

    return generate


if __name__ == "__main__":
    p = protocol.parser(__doc__)
    p.add_argument("--engine", choices=("transformers", "optimum"), required=True)
    args = p.parse_args()
    protocol.run(args, lambda: load(args), DISTS)
